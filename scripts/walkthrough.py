#!/usr/bin/env python3
"""Runs every command of README.md's "Try it" section and compares what it prints with what the
README says it prints, so a changed answer fails CI rather than a newcomer.

Each `sh` block is cut into commands (a line ending in `\\` or inside an open quote continues
the command). The `# ` comment lines right after a command are its printed output, as the
README shows it; `…` in them stands for any text (a PEM body, a timestamp). Every command must
have one. Usage: walkthrough.py BIN TOKEN (the dev server must be listening on 127.0.0.1:8080;
scripts/walkthrough.sh starts it).
"""

import os
import re
import shlex
import subprocess
import sys


def section(readme: str) -> str:
    lines, on = [], False
    for line in readme.splitlines():
        if line.startswith("## "):
            on = line.startswith("## Try it")
            continue
        if on:
            lines.append(line)
    return "\n".join(lines)


def blocks(text: str):
    block, inside = [], False
    for line in text.splitlines():
        if line == "```sh":
            block, inside = [], True
        elif line == "```" and inside:
            inside = False
            yield block
        elif inside:
            block.append(line)


def complete(command: str) -> bool:
    if command.endswith("\\"):
        return False
    try:
        shlex.split(command)
    except ValueError:  # an open quote
        return False
    return True


def commands(block):
    """(command, expected output) pairs of one block."""
    out, current, expected = [], None, None
    for line in block:
        if line.startswith("TOKEN="):  # the token the server printed, given by the caller
            continue
        if current is None and line.startswith("# ") and out:
            prev, exp = out[-1]
            out[-1] = (prev, line[2:] if exp is None else exp + "\n" + line[2:])
            continue
        if current is None and not line.strip():
            continue
        current = line if current is None else current + "\n" + line
        if complete(current):
            out.append((current, None))
            current = None
    if current is not None:
        sys.exit(f"walkthrough: an unfinished command in README.md: {current}")
    return out


def matches(expected: str, printed: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("…"))
    return re.fullmatch(pattern, printed.strip(), re.DOTALL) is not None


def main() -> None:
    binary, token = sys.argv[1], sys.argv[2]
    with open("README.md", encoding="utf-8") as f:
        text = section(f.read())
    ran = 0
    for block in blocks(text):
        for command, expected in commands(block):
            if expected is None:
                sys.exit(f"walkthrough: README.md shows no output for:\n{command}")
            run = command.replace("cargo run --release -- ", binary + " ")
            done = subprocess.run(
                ["bash", "-euc", run],
                env={**os.environ, "TOKEN": token},
                capture_output=True,
                text=True,
                timeout=120,
            )
            if done.returncode != 0 or not matches(expected, done.stdout):
                sys.exit(
                    "walkthrough: README.md says\n"
                    f"  {command}\nprints\n  {expected}\nbut it printed (exit {done.returncode})\n"
                    f"  {done.stdout.strip()}\n{done.stderr.strip()}"
                )
            ran += 1
    if ran == 0:
        sys.exit("walkthrough: no command found in README.md's Try it section")
    print(f"walkthrough: {ran} README commands printed what the README shows")


if __name__ == "__main__":
    main()
