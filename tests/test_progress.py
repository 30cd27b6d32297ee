"""Progress outside a terminal (SLURM logs, pipes): plain lines, at each tenth and on a timer."""

import re

from geoconcept_cli import progress
from geoconcept_cli.progress import lazy_progress_bar, progress_bar


def _lines(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


def _percent(line: str) -> int:
    return int(re.search(r"\((\d+)%\)", line)[1])


def test_a_line_at_each_tenth_of_the_work_with_rate_and_time_left(capsys):
    with progress_bar("embedding images", 40, unit="images") as advance:
        for _ in range(40):
            advance(1)
    lines = _lines(capsys)
    assert [_percent(x) for x in lines] == list(range(10, 101, 10)), lines
    assert re.fullmatch(r"embedding images: 4/40 \(10%\), [\d,]+ images/s, 0:00:\d\d left",
                        lines[0])  # fmt: skip
    assert re.fullmatch(r"embedding images: 40/40 \(100%\), [\d,]+ images/s", lines[-1])


def test_work_between_tenths_is_logged_on_a_timer(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    with progress_bar("explaining", 1000) as advance:
        for _ in range(3):
            advance(1)
    lines = _lines(capsys)
    assert [x.split(",")[0] for x in lines] == [f"explaining: {i}/1" for i in (1, 2, 3)]
    assert all(x.endswith(" left") and "(0%)" in x for x in lines)


def test_fields_and_absolute_updates_as_training_reports_them(capsys):
    fields = "{task.fields[loss]} {task.fields[rate]}"
    with progress_bar("training", 1, fields, loss="", rate="") as bar:
        bar(0, completed=10, total=100)  # before the first log step: no empty fields shown
        bar(0, completed=50, total=100, loss="loss 1.2345", rate="80 samples/s")
        bar(0, completed=55, total=100)  # no new tenth within the minute: no line
        bar(0, completed=100, total=100, loss="loss 0.5000", rate="90 samples/s")
    lines = _lines(capsys)
    assert len(lines) == 3, lines
    assert re.fullmatch(r"training: 10/100 \(10%\), 0:00:\d\d left", lines[0])
    assert lines[1].startswith("training: 50/100 (50%), loss 1.2345 80 samples/s, ")
    assert lines[2] == "training: 100/100 (100%), loss 0.5000 90 samples/s"


def test_lazy_progress_shows_nothing_without_work(capsys):
    with lazy_progress_bar("encoding gallery", "points"):
        pass
    assert _lines(capsys) == []
    with lazy_progress_bar("encoding gallery", "points") as advance:
        for _ in range(4):
            advance(25, 100)
    assert [_percent(x) for x in _lines(capsys)] == [25, 50, 75, 100]
