"""Put the benchmark results into the site: `benchmarks/README.md` as the Results page.

`python benchmarks/report.py` renders `benchmarks/README.md` from `benchmarks/results/*.json`; this
script includes that file as it is at build time (and the JSON/PNG files it links to), so the site
never holds a number of its own. Links that leave `benchmarks/results/` (to scripts, other READMEs)
become plain text, so `mkdocs build --strict` does not depend on what the report links to. Without a
`benchmarks/README.md` the page lists the JSON files instead.
"""

import re
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
README = BENCH / "README.md"
PAGE = "benchmarks/index.md"
INTRO = (
    "!!! note\n"
    "    This page is `benchmarks/README.md`, rendered by `python benchmarks/report.py` from the JSON files in\n"
    "    `benchmarks/results/`: every figure here comes from one of those files.\n"
)
INLINE = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]+)>?(\s+\"[^\"]*\")?\s*\)")
REFDEF = re.compile(r"^\s{0,3}\[([^\]]+)\]:\s*<?(\S+?)>?(\s+.*)?$", re.MULTILINE)


def copy_result(target: str) -> bool:
    """Copy benchmarks/<target> into the site if it is a file under benchmarks/results/."""
    path = target.split("#")[0].split("?")[0]
    if re.match(r"^[a-z][a-z0-9+.-]*:", path) or path.startswith(("/", "#")) or not path:
        return True  # absolute URL or in-page anchor: leave alone
    source = (BENCH / path).resolve()
    if not source.is_file() or RESULTS.resolve() not in source.parents:
        return False
    with mkdocs_gen_files.open(f"benchmarks/{source.relative_to(BENCH.resolve()).as_posix()}", "wb") as fd:
        fd.write(source.read_bytes())
    return True


def inline(match: re.Match) -> str:
    bang, text, target, _title = match.groups()
    if copy_result(target):
        return match.group(0)
    if text.strip("`* ").rstrip("/") == target.rstrip("/"):
        return text  # the text already names the target
    return f"{text} (`{target}`)" if not bang else f"*{text or target}* (`{target}`)"


def refdef(match: re.Match) -> str:
    return match.group(0) if copy_result(match.group(2)) else ""


if README.is_file():
    text = REFDEF.sub(refdef, INLINE.sub(inline, README.read_text(encoding="utf-8")))
    lines = text.splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith("# ")), None)
    if at is None:
        lines[:0] = ["# Results", ""]
        at = 0
    if "report.py" not in text:  # the generated README says where it comes from; a hand-written one may not
        lines[at + 1 : at + 1] = ["", INTRO]
    body = "\n".join(lines) + "\n"
else:
    files = sorted(path for path in RESULTS.glob("*") if path.suffix in {".json", ".png"})
    for path in files:
        copy_result(f"results/{path.name}")
    body = (
        "# Results\n\n"
        "The benchmark tables are rendered into `benchmarks/README.md` by `python benchmarks/report.py` from the\n"
        "JSON files in `benchmarks/results/` (that README is not in this checkout yet). The files:\n\n"
        + "".join(f"- [`{path.name}`](results/{path.name})\n" for path in files)
    )

with mkdocs_gen_files.open(PAGE, "w") as fd:
    fd.write(body)
mkdocs_gen_files.set_edit_path(PAGE, "benchmarks/README.md" if README.is_file() else "benchmarks/report.py")
