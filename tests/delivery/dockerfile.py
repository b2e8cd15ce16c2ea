"""A small Dockerfile reader for tests: instructions grouped by build stage."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Instruction:
    keyword: str
    arguments: str


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def instructions(text: str) -> list[Instruction]:
    """Logical instructions: comments dropped, backslash continuations joined."""
    result: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, arguments = full.partition(" ")
        result.append(Instruction(keyword.upper(), arguments.strip()))
    return result


def stages(path: Path) -> list[Stage]:
    result: list[Stage] = []
    for instruction in instructions(path.read_text()):
        if instruction.keyword == "FROM":
            match = re.fullmatch(
                r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", instruction.arguments, re.I
            )
            assert match, f"cannot read FROM {instruction.arguments}"
            result.append(Stage(base=match[1], name=match[2] or str(len(result))))
        elif result:
            result[-1].instructions.append(instruction)
    return result


def chain(all_stages: list[Stage], name: str) -> list[Stage]:
    """A stage and the stages it is built FROM, base first."""
    by_name = {stage.name: stage for stage in all_stages}
    found = [by_name[name]]
    while found[0].base in by_name:
        found.insert(0, by_name[found[0].base])
    return found


def exec_form(arguments: str) -> list[str] | None:
    """The argument list of an exec-form (JSON array) instruction, else None."""
    import json

    text = arguments.strip()
    if not text.startswith("["):
        return None
    return json.loads(text)


def shell_words(arguments: str) -> list[str]:
    return shlex.split(arguments, posix=True)
