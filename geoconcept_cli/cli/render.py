"""How answers read in a terminal: candidates, probabilities and regions, explanations with
their concept bars, and where-answers (``--json`` prints the results' own ``to_json``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.table import Table

from .common import stdout

if TYPE_CHECKING:  # the results' modules import torch: not needed to print them
    from ..concepts.set import ConceptWeight
    from ..inference.results import Album, Candidate, Explanation, Prediction, WhereAnswer


def count(n: int, noun: str) -> str:
    """'1 photo', '2 photos': a count a person reads."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def print_json(data: dict[str, Any]) -> None:
    stdout.print_json(json.dumps(data))


def latlon(lat: float, lon: float) -> str:
    """Coordinates to 4 decimals (~10 m): distinct gallery places often share a town and the
    first 2 decimals, and would look like one place repeated."""
    return f"{lat:.4f}, {lon:.4f}"


def held(points: int) -> str:
    """How many gallery points a candidate holds, where it is more than one."""
    return f"  [dim]({points} gallery points)[/]" if points > 1 else ""


def print_merged(merge_km: float | None) -> None:
    """What a candidate stands for: one gallery point, or the points within a radius."""
    if merge_km:
        stdout.print(f"[dim]candidates: gallery points within {merge_km:g} km merged, "
                     "probabilities summed (--merge-km 0 lists each point)[/]",
                     highlight=False)  # fmt: skip


def print_candidates(candidates: list[Candidate], merge_km: float | None) -> None:
    """One line a candidate, then what a candidate stands for."""
    for c in candidates:
        stdout.print(f"{c.rank}  {latlon(c.lat, c.lon)}  p={c.prob:.3g}  {c.place}"
                     f"{held(c.points)}", highlight=False)  # fmt: skip
    print_merged(merge_km)


def withheld(result: Prediction | Explanation) -> bool:
    """Say "not localizable at this confidence" where the photo's confidence is below the
    level (the best guess stays in --json); whether it was withheld."""
    c = result.confidence
    if c is None or c["answered"]:
        return False
    stdout.print(
        f"{result.image or 'photo'}: [bold]not localizable at this confidence[/] (probability "
        f"{c['probability']:.2f} that the most probable gallery point lies within "
        f"{c['radius_km']:g} km, below "
        f"{c['level']:g}); --json has the best guess, --abstain-below 0 shows it",
        highlight=False, soft_wrap=True,
    )  # fmt: skip
    if c["guarantee"]:
        stdout.print(f"[dim]the level: {c['guarantee']}[/]", highlight=False, soft_wrap=True)
    return True


def print_prediction(result: Prediction) -> None:
    if withheld(result):
        return
    print_candidates(result.predictions, result.merge_km)
    print_hints(result.hints)
    print_probabilities(result)


def print_hints(hints: list[dict[str, Any]] | None) -> None:
    """What each hint gave the answer, and for an explanation what it maps onto."""
    for h in hints or []:
        said = f"hint {h['hint']!r}"
        if "concepts" in h and h["concepts"]:
            said += " ~ " + ", ".join(c["concept"] for c in h["concepts"])
        if not h.get("applied", True):
            said += ": maps onto no concept clearly, not applied"
        elif "share" in h:
            said += (
                f": {h['share']:+.0%} of the answer's lead over the hint's rival (logit "
                f"{h['logit_gain']:+.3g} beside the photo's {h['photo_logit_gain']:+.3g})"
            )
        stdout.print(said, highlight=False, soft_wrap=True)


def print_limited(probabilities: dict[str, Any] | None) -> None:
    """The limits a search kept to, where it had any."""
    if probabilities and "limited_to" in probabilities:
        stdout.print(f"limited to {probabilities['limited_to']}", highlight=False,
                     soft_wrap=True)  # fmt: skip


def print_album(album: Album) -> None:
    """The joint answer of an album, then each photo's part in it."""
    print_candidates(album.predictions, album.merge_km)
    stdout.print(f"[dim]{album.probabilities['album']}; "
                 f"{album.probabilities['note']}[/]", highlight=False)  # fmt: skip
    print_limited(album.probabilities)
    for ph in album.photos:
        flag = (f"  [bold]disagrees[/]: its own top place is {ph['km_from_joint_region']:,.0f} km "
                "from the album's" if ph["disagrees"] else "")  # fmt: skip
        shows = f"; shows {', '.join(ph['concepts'])}" if ph.get("concepts") else ""
        stdout.print(f"{ph['share']:+.0%}  {ph['image']}  (alone: {ph['place']}{shows}){flag}",
                     highlight=False, soft_wrap=True)  # fmt: skip


def print_probabilities(result: Prediction | Explanation) -> None:
    """Whether the probabilities are calibrated, the confidence and the confidence region if
    there are."""
    stdout.print(f"[dim]{result.probabilities['note']}[/]", highlight=False)
    print_limited(result.probabilities)
    c = result.confidence
    if c is not None:
        level = f" (answered at {c['level']:g} and above)" if c["level"] else ""
        stdout.print(f"confidence {c['probability']:.2f} that the most probable gallery point "
                     f"lies within {c['radius_km']:g} km{level}", highlight=False)  # fmt: skip
    region = result.region
    if region:
        spans = ", ".join(f"{c['country']} {c['mass']:.2f}" for c in region["countries"][:6])
        stdout.print(
            f"{region['coverage']:.0%} confidence region (true location within "
            f"{region['radius_km']:g} km of one of its places): {region['places']:,} places, "
            f"{region['area_km2']:,.0f} km²; countries by probability: {spans}",
            highlight=False,
            soft_wrap=True,
        )


def _bars(title: str, entries: list[ConceptWeight] | None, source: str | None) -> None:
    if not entries:
        return
    stdout.print(f"\n[bold]{title}[/] [dim]({source})[/]" if source else f"\n[bold]{title}[/]")
    top = max(abs(e["weight"]) for e in entries) or 1.0
    width = max(30, *(len(e["concept"]) for e in entries))  # a name is never cut
    for e in entries:
        bar = "█" * max(1, round(12 * abs(e["weight"]) / top))
        kind = f"{e['category']}/{e['subcategory']}"
        stdout.print(f"  {e['concept']:<{width}} {e['weight']:+.3f} {bar:<12} [dim]{kind}[/]",
                     highlight=False)  # fmt: skip


def print_explanation(exp: Explanation) -> None:
    """The terminal view of one explanation: locations table, concept bars, reasons (none
    where the photo is below the abstention level)."""
    if withheld(exp):
        return
    table = Table(title=f"{exp.image}  [dim]({exp.mode})[/]", title_justify="left")
    for col in ("#", "lat, lon", "p", "place"):
        table.add_column(col)
    for p in exp.predictions:
        table.add_row(str(p.rank), latlon(p.lat, p.lon), f"{p.prob:.3g}",
                      p.place + held(p.points))  # fmt: skip
    stdout.print(table)
    print_merged(exp.merge_km)
    print_hints(exp.hints)
    spread = exp.spread
    stdout.print(f"top-k spread: max {spread['max_pairwise_km']:.0f} km apart, mean "
                 f"{spread['mean_to_top1_km']:.0f} km from #1", highlight=False)  # fmt: skip
    print_probabilities(exp)
    _bars("What the photo shows", exp.photo_concepts, exp.photo_concepts_source)
    _bars("What the place is known for", exp.place_concepts, exp.place_concepts_source)
    _bars("Why here (per-concept score terms)", exp.why_here, None)
    if exp.why_here is not None and not exp.why_here:
        stdout.print("\n[bold]Why here[/]: no concept shown in the photo adds to this score")
    if exp.rather_than is not None:
        r = exp.rather_than
        pro = ", ".join(e["concept"] for e in r["for"])
        con = ", ".join(e["concept"] for e in r["against"])
        stdout.print(f"\nPredicted {exp.predictions[0].place} rather than "
                     f"{r['runner_up']['place']} mainly because of {pro}; against it: {con}.",
                     highlight=False)  # fmt: skip
        stdout.print(f"Rule: {exp.rule}", highlight=False)
    if exp.check is not None:
        _print_check(exp.check)
    if exp.note is not None:
        stdout.print(f"\n[dim]{exp.note}[/]")


def _print_check(c: dict[str, Any]) -> None:
    """The deletion check's numbers and verdict."""
    verdict = "[green]faithful[/]" if c["faithful"] else (
        f"[red]NOT more faithful than random[/] ({'; '.join(c['unmet'])})")  # fmt: skip
    top, rand = c["top_concepts_removed"], c["random_concepts_removed"]
    moves = "drops" if top["score_drop"] >= 0 else "raises"
    stdout.print(
        f"\nCheck: removing the top {c['m']} concepts {moves} the score by "
        f"{abs(top['score_drop']):.3f} (rank -> {top['rank_after']}); removing {c['m']} "
        f"random concepts drops it by {rand['score_drop']:.3f} ± {rand['score_drop_std']:.3f} "
        f"(mean ± sd of {c['draws']} draws; median rank -> {rand['rank_after_median']:.0f}). "
        f"The top concepts beat {round(c['beats_random_share'] * c['draws'])} of "
        f"{c['draws']} draws: {verdict}"
    )


def print_where(answer: WhereAnswer) -> None:
    stdout.print(f"[bold]{answer.query}[/]  [dim]({answer.mode}; {answer.note})[/]",
                 highlight=False, soft_wrap=True)  # fmt: skip
    for p in answer.places:
        stdout.print(f"{p['rank']}  {latlon(p['lat'], p['lon'])}  {answer.score} "
                     f"{p['score']:.3g}  {p['place']}{held(p['points'])}",
                     highlight=False)  # fmt: skip
    print_merged(answer.merge_km)
    print_limited(answer.probabilities)
    how = "summed probability" if answer.score == "probability" else "mean activation"
    stdout.print(f"countries by {how}: " + ", ".join(
        f"{c['country']} {c['score']:.3g}" for c in answer.countries), highlight=False,
        soft_wrap=True)  # fmt: skip
