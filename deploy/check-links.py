#!/usr/bin/env python3
"""Every link in README.md and docs/*.md resolves inside the repository: relative links
name an existing file, and #anchors an existing heading (GitHub's slugs). Links outside
(https://...) are left alone: a clone must not need them. Exit 1 listing what is broken."""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
docs = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
link = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
fence = re.compile(r"^\s*```")


def slug(heading: str) -> str:
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set:
    found, inside = set(), False
    for line in path.read_text().splitlines():
        if fence.match(line):
            inside = not inside
        elif not inside and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


broken = []
checked = 0
for doc in docs:
    inside = False
    for n, line in enumerate(doc.read_text().splitlines(), 1):
        if fence.match(line):
            inside = not inside
            continue
        if inside:
            continue
        for target in link.findall(line):
            if re.match(r"^[a-z]+:", target):
                continue
            checked += 1
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            where = f"{doc.relative_to(root)}:{n}: {target}"
            if root not in dest.parents and dest != root:
                broken.append(f"{where} (outside the repository)")
            elif not dest.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where} (no heading #{anchor})")

print(f"links: {checked} checked in {len(docs)} documents, {len(broken)} broken")
for b in broken:
    print("  " + b)
sys.exit(1 if broken else 0)
