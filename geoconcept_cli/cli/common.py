"""What every command shares: the consoles, one-line errors and warnings, and options read
from the library's own dataclasses (a model's from ``ModelSpec``, a run's from
``TrainConfig``), so that no command declares them again."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import typing
import warnings
from collections.abc import Callable
from typing import Annotated, Any, TextIO, TypeVar

import typer
from rich.console import Console

from ..errors import GeoconceptError
from ..model.spec import RUN_PATHS, ModelSpec

stdout = Console(soft_wrap=True)  # lines whole off a terminal too: scripts read them
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def say(text: str) -> None:
    """A line of the answer, on stdout, as is (no markup, no highlighting)."""
    stdout.print(text, markup=False, highlight=False)


def note(text: str) -> None:
    """A line about the work (what was found, skipped, done), on stderr, as is."""
    err.print(text, markup=False, highlight=False, soft_wrap=True)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, file: TextIO | None = None, line: str | None = None
                      ) -> None:  # fmt: skip
    err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


@typing.overload
def cli_command(fn: F) -> F: ...
@typing.overload
def cli_command(*, on_interrupt: str) -> Callable[[F], F]: ...
def cli_command(fn: F | None = None, *, on_interrupt: str = "") -> Any:
    """Run a command with one-line warnings; bad input (GeoconceptError, or a path the system
    refuses: an --out that is a file, a read-only folder) becomes 'error: ...' + exit 2.
    Ctrl-C prints ``on_interrupt`` (how to continue) and exits 130."""
    if fn is None:
        return functools.partial(cli_command, on_interrupt=on_interrupt)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warnings.showwarning = _one_line_warning
        logging.getLogger().setLevel(logging.ERROR)  # open_clip logs chatter on the root logger
        try:
            return fn(*args, **kwargs)
        except (GeoconceptError, OSError) as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print(f"interrupted{'; ' + on_interrupt if on_interrupt else ''}",
                      highlight=False, soft_wrap=True)  # fmt: skip
            raise typer.Exit(130) from None

    return wrapper


def options_from(cls: type, names: str, *, after: str | None, into: str,
                 **helps: str | None) -> Callable[[F], F]:  # fmt: skip
    """Give a command the options of dataclass ``cls``'s fields ``names`` (space-separated):
    their types, defaults and help (and flag, metavar) from the fields' metadata, or ``helps``,
    placed after its parameter ``after`` (None: first). The command receives their values in
    its parameter ``into``, a dict (decorators stack: each adds its fields to it)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        params = [p for p in sig.parameters.values() if p.name != into]
        added = []
        for name in names.split():
            f, meta = fields[name], fields[name].metadata
            flags = [meta["flag"]] if meta.get("flag") else []
            option = typer.Option(*flags, help=helps.get(name, meta.get("help")),
                                  metavar=meta.get("metavar"))  # fmt: skip
            annotation = Annotated[meta.get("type", hints[name]), option]  # type: ignore[valid-type]
            added.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                           default=f.default, annotation=annotation))  # fmt: skip
        at = 0 if after is None else [p.name for p in params].index(after) + 1
        params[at:at] = added

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {n: kwargs.pop(n) for n in names.split()}
            kwargs[into] = {**kwargs.get(into, {}), **given}
            return fn(*args, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return typing.cast(F, wrapper)

    return decorate


def model_options(names: str, *, after: str | None, **helps: str | None) -> Callable[[F], F]:
    """``options_from`` ModelSpec: the command receives them in its ``model`` dict."""
    return options_from(ModelSpec, names, after=after, into="model", **helps)


RUN_HELP = f"Trained run: {RUN_PATHS}."  # --checkpoint where pretrained GeoCLIP is no default
Model = dict[str, Any]  # ModelSpec fields given as options (see model_options)
Commands = dict[str, Callable[..., object]]  # a group's commands, by name
