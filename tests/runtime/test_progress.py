"""Progress outside a terminal (SLURM logs, pipes): plain lines, as work begins, at each tenth
and on a timer."""

import re

from geoconcept_cli.runtime import progress as progress
from geoconcept_cli.runtime.progress import lazy_progress_bar, progress_bar


def _lines(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


def _percent(line: str) -> int:
    return int(re.search(r"\((\d+)%\)", line)[1])


def test_a_line_at_each_tenth_of_the_work_with_rate_and_time_left(capsys):
    with progress_bar("embedding images", 40, unit="images") as advance:
        for _ in range(40):
            advance(1)
    lines = _lines(capsys)
    assert lines[0] == "embedding images: 1/40 (2%)"  # the work has begun; no rate from one report
    assert [_percent(x) for x in lines[1:]] == list(range(10, 101, 10)), lines
    assert re.fullmatch(
        r"embedding images: 4/40 \(10%\), [\d,]+ images/s, 0:00:\d\d left", lines[1]
    )  # fmt: skip (the rate runs from the first report, at 1)
    assert re.fullmatch(r"embedding images: 40/40 \(100%\), [\d,]+ images/s", lines[-1])


def test_work_between_tenths_is_logged_on_a_timer(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    with progress_bar("explaining", 1000) as advance:
        for _ in range(3):
            advance(1)
    lines = _lines(capsys)
    assert lines[0] == "explaining: 1/1,000 (0%)"  # no rate from a single report
    assert [x.split(",")[0] for x in lines[1:]] == [f"explaining: {i}/1" for i in (2, 3)]
    assert all(x.endswith(" left") and "(0%)" in x for x in lines[1:])


def test_fields_and_absolute_updates_as_training_reports_them(capsys):
    fields = "{task.fields[loss]} {task.fields[rate]}"
    with progress_bar("training", 1, fields, loss="", rate="") as bar:
        bar(0, completed=10, total=100)  # before the first log step: no empty fields shown
        bar(0, completed=50, total=100, loss="loss 1.2345", rate="80 samples/s")
        bar(0, completed=55, total=100)  # no new tenth within the minute: no line
        bar(0, completed=100, total=100, loss="loss 0.5000", rate="90 samples/s")
    lines = _lines(capsys)
    assert len(lines) == 3, lines
    assert lines[0] == "training: 10/100 (10%)"
    assert lines[1].startswith("training: 50/100 (50%), loss 1.2345 80 samples/s, ")
    assert lines[2] == "training: 100/100 (100%), loss 0.5000 90 samples/s"


def test_a_resumed_run_does_not_count_work_done_before_as_speed(capsys, monkeypatch):
    clock = iter([0.0, 100.0, 110.0, 120.0])  # bar opened, then three reports 10 s apart
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(progress, "LOG_EVERY_S", 5.0)  # a line for each report
    with progress_bar("training", 1000, unit="steps") as bar:
        bar(0, completed=900)  # resumed at step 900
        bar(0, completed=950)
        bar(0, completed=1000)
    lines = _lines(capsys)
    assert lines == ["training: 900/1,000 (90%)",
                     "training: 950/1,000 (95%), 5.0 steps/s, 0:00:10 left",
                     "training: 1,000/1,000 (100%), 5.0 steps/s"]  # fmt: skip


def test_colours_forced_in_a_log_still_give_plain_lines(capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich then calls any stream a terminal
    with progress_bar("explaining", 2) as advance:
        advance(2)
    assert _lines(capsys) == ["explaining: 2/2 (100%)"]


def test_lazy_progress_shows_nothing_without_work(capsys):
    with lazy_progress_bar("encoding gallery", "points"):
        pass
    assert _lines(capsys) == []
    with lazy_progress_bar("encoding gallery", "points") as advance:
        for _ in range(4):
            advance(25, 100)
    assert [_percent(x) for x in _lines(capsys)] == [25, 50, 75, 100]


def test_concept_embedding_says_it_has_begun_and_reports_every_64(capsys, tiny_clip):
    """A batch of ViT-L/14 text takes ~45 s on a 2-core CPU: the log says at once that the
    work began, then comes a line about every tenth (before, the first came at 39%)."""
    from geoconcept_cli.model.clip import load_clip
    from geoconcept_cli.model.concept_embeddings import encode_concepts

    clip = load_clip(tiny_clip, "none")
    with lazy_progress_bar("embedding concepts", "concepts") as advance:
        emb = encode_concepts([f"c{i}" for i in range(645)], clip,
                              progress=lambda n: advance(n, 645))  # fmt: skip
    lines = _lines(capsys)
    assert emb.shape == (645, 768)
    assert lines[0] == "embedding concepts: 0/645 (0%)"
    assert [_percent(x) for x in lines[1:]] == [19, 29, 39, 49, 59, 69, 79, 89, 99, 100]
