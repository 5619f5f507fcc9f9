"""A small imitation of swift-argument-parser's parsing rules and messages.

Rules mimicked: ``--opt value`` and ``--opt=value``; flags take no value;
a repeated single-value option keeps the last value; array options collect;
options may appear anywhere among positionals; ``--`` ends options; values
that look like options are not consumed ("Missing value for ..."); errors
print ``Error: <msg>``, a usage line and ``  See 'tart <sub> --help' for more
information.`` and exit 64.
"""

from __future__ import annotations

from .common import UsageErr

TYPE_CHECKING = False  # avoid importing typing at run time: every `tart` call pays for imports
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class Opt:
    """An option: kind is flag | value | array; inversion is "--no-x" for flag pairs."""

    def __init__(
        self,
        names: tuple[str, ...],
        dest: str,
        kind: str = "flag",
        valname: str = "",
        conv: Callable[[str], Any] | None = None,
        default: Any = None,
        help: str = "",
        hidden: bool = False,
        inversion: str | None = None,
        since: str | None = None,
    ):
        self.names, self.dest, self.kind, self.valname = names, dest, kind, valname
        self.conv, self.default, self.help, self.hidden, self.inversion = (
            conv,
            default,
            help,
            hidden,
            inversion,
        )
        self.since = since  # the first Tart version with this option (None: older than 2.0)

    def present(self) -> bool:
        """Whether the played Tart version has this option."""
        from .common import at_least

        return self.since is None or at_least(self.since)

    @property
    def label(self) -> str:
        long = self.names[0]
        return f"{long} <{self.valname}>" if self.kind != "flag" else long


class Arg:
    """A positional argument, shown as <name>."""

    def __init__(
        self,
        name: str,
        dest: str,
        array: bool = False,
        optional: bool = False,
        help: str = "",
        conv: Callable[[str], Any] | None = None,
    ):
        self.name, self.dest, self.array, self.optional, self.help, self.conv = (
            name,
            dest,
            array,
            optional,
            help,
            conv,
        )

    @property
    def label(self) -> str:
        return f"<{self.name}>"


class Command:
    def __init__(
        self,
        name: str,
        abstract: str,
        args: list[Arg] | None = None,
        opts: list[Opt] | None = None,
        run: Callable[[dict], int] | None = None,
        hidden: bool = False,
        discussion: str = "",
    ):
        self.name, self.abstract, self.args, self.opts = name, abstract, args or [], opts or []
        self.run, self.hidden, self.discussion = run, hidden, discussion

    def usage(self) -> str:
        parts = [f"tart {self.name}"]
        visible = [o for o in self.opts if not o.hidden and o.present()]
        if len(visible) > 12:
            parts.append("[<options>]")
        for a in self.args:
            lab = a.label + (" ..." if a.array else "")
            parts.append(f"[{lab}]" if a.optional else lab)
        if len(visible) <= 12:
            for o in visible:
                lab = o.label + (" ..." if o.kind == "array" else "")
                if o.inversion:
                    lab = f"{o.names[0]}|{o.inversion}"
                parts.append(f"[{lab}]")
        return " ".join(parts)

    def help_text(self) -> str:
        lines = [f"OVERVIEW: {self.abstract}", ""]
        if self.discussion:
            lines += [self.discussion, ""]
        lines += [f"USAGE: {self.usage()}", ""]
        if self.args:
            lines.append("ARGUMENTS:")
            for a in self.args:
                lines.append(f"  {a.label:<32}{a.help}")
            lines.append("")
        lines.append("OPTIONS:")
        for o in self.opts:
            if o.hidden or not o.present():
                continue
            names = ", ".join(reversed(o.names)) if len(o.names) > 1 else o.names[0]
            lab = f"{names} <{o.valname}>" if o.kind != "flag" else names
            if o.inversion:
                lab = f"{o.names[0]}/{o.inversion}"
            lines.append(f"  {lab:<32}{o.help}")
        lines.append(f"  {'--version':<32}Show the version.")
        lines.append(f"  {'-h, --help':<32}Show help information.")
        return "\n".join(lines)


class HelpRequested(Exception):
    pass


def _invalid(value: str, label: str, extra: str = "") -> UsageErr:
    return UsageErr(f"The value '{value}' is invalid for '{label}'{extra}")


def parse(cmd: Command, argv: list[str]) -> dict:
    res: dict[str, Any] = {}
    for o in cmd.opts:
        res[o.dest] = [] if o.kind == "array" else o.default
    for a in cmd.args:
        res[a.dest] = [] if a.array else None
    by_name: dict[str, tuple[Opt, bool]] = {}
    for o in cmd.opts:
        if not o.present():
            continue  # an older Tart: "Unknown option"
        for n in o.names:
            by_name[n] = (o, True)
        if o.inversion:
            by_name[o.inversion] = (o, False)

    positionals: list[str] = []
    i = 0
    only_pos = False
    while i < len(argv):
        tok = argv[i]
        i += 1
        if only_pos:
            positionals.append(tok)
            continue
        if tok == "--":
            only_pos = True
            continue
        if tok in ("-h", "--help", "-help"):
            raise HelpRequested()
        if tok.startswith("--") or (tok.startswith("-") and len(tok) > 1):
            name, eq, inline = tok.partition("=")
            hit = by_name.get(name)
            if hit is None and not tok.startswith("--") and not eq:
                # a group of short flags, e.g. -qv
                shorts = [by_name.get("-" + ch) for ch in tok[1:]]
                if all(s is not None and s[0].kind == "flag" for s in shorts):
                    for o, val in shorts:  # type: ignore[misc]
                        res[o.dest] = val
                    continue
            if hit is None:
                raise UsageErr(f"Unknown option '{name}'")
            o, val = hit
            if o.kind == "flag":
                if eq:
                    raise UsageErr(f"Unknown option '{tok}'")
                res[o.dest] = val
                continue
            if eq:
                value = inline
            else:
                if i >= len(argv) or (
                    argv[i].startswith("-") and len(argv[i]) > 1 and argv[i] != "-"
                ):
                    raise UsageErr(
                        f"Missing value for '{o.label}'",
                        help_line=f"Help:  {o.label}  {o.help}".rstrip(),
                    )
                value = argv[i]
                i += 1
            if o.conv is not None:
                try:
                    conv = o.conv(value)
                except UsageErr:
                    raise
                except ValueError as e:
                    raise _invalid(value, o.label, f". {e}" if str(e) else "") from None
            else:
                conv = value
            if o.kind == "array":
                res[o.dest].append(conv)
            else:
                res[o.dest] = conv
            continue
        positionals.append(tok)

    pi = 0
    for a in cmd.args:
        if a.array:
            vals = positionals[pi:]
            pi = len(positionals)
            if not vals and not a.optional:
                raise UsageErr(
                    f"Missing expected argument '{a.label} ...'",
                    help_line=f"Help:  {a.label}  {a.help}".rstrip(),
                )
            res[a.dest] = [a.conv(v) if a.conv else v for v in vals]
            continue
        if pi < len(positionals):
            v = positionals[pi]
            pi += 1
            if a.conv:
                try:
                    v = a.conv(v)
                except ValueError:
                    raise _invalid(positionals[pi - 1], a.label) from None
            res[a.dest] = v
        elif not a.optional:
            raise UsageErr(
                f"Missing expected argument '{a.label}'",
                help_line=f"Help:  {a.label}  {a.help}".rstrip(),
            )
    if pi < len(positionals):
        raise UsageErr(f"Unexpected argument '{positionals[pi]}'")
    return res


# value converters ---------------------------------------------------------


def uint(bits: int = 64) -> Callable[[str], int]:
    def conv(s: str) -> int:
        if not s.isdigit():
            raise ValueError("")
        v = int(s)
        if v >= 1 << bits:
            raise ValueError("")
        return v

    return conv


def int_(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise ValueError("") from None


def choice(*values: str) -> Callable[[str], str]:
    def conv(s: str) -> str:
        if s not in values:
            if len(values) == 2:
                listed = f"'{values[0]}' and '{values[1]}'"
            else:
                listed = ", ".join(f"'{v}'" for v in values[:-1]) + f" and '{values[-1]}'"
            raise ValueError(f"Please provide one of {listed}.")
        return s

    return conv
