"""How answers read in a terminal (cli/render.py)."""

from __future__ import annotations

from geoconcept_cli.cli.render import count, print_explanation
from geoconcept_cli.inference.results import Candidate, Explanation


def test_a_concept_name_is_never_cut(capsys):
    """Names were cut at 30 characters ("license plate with blue eu str")."""
    names = ["license plate with blue eu strip on white", "yurt"]
    exp = Explanation(image="x.jpg", mode="zero-shot",
                      predictions=[Candidate(1, 48.8, 2.3, 0.5, 0, "Paris")],
                      spread={"max_pairwise_km": 0.0, "mean_to_top1_km": 0.0},
                      probabilities={"note": "probabilities uncalibrated"},
                      photo_concepts=[{"concept": n, "category": "human",
                                       "subcategory": "road", "weight": w}
                                      for n, w in zip(names, (0.3, 0.1), strict=True)])  # fmt: skip
    print_explanation(exp)
    out = capsys.readouterr().out
    assert f"  {names[0]} +0.300" in out  # whole, and the columns still line up
    assert f"  {names[1]:<{len(names[0])}} +0.100" in out


def test_counts_read_as_a_person_writes_them():
    assert count(1, "photo") == "1 photo" and count(2, "photo") == "2 photos"
    assert count(12_345, "image") == "12,345 images"
