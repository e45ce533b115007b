"""Generate one options page per recipe (`recipes/*.py`) from the recipe's own argument parser.

Each recipe runs in a subprocess with `--help`, and the parser's actions are read instead of printed,
so the tables always match the flags the recipes accept (flag, default, help text from the dataclass
fields of `nlptransfer`). A recipe whose `--help` fails is a warning, which fails `mkdocs build --strict`.
"""

import ast
import json
import logging
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "nlptransfer" / "recipes"  # the recipes themselves; recipes/*.py in a checkout only call them
MARK = "@@nlptransfer-options@@"
log = logging.getLogger("mkdocs.plugins.gen_recipe_options")

# Runs inside the subprocess: argparse's --help action calls print_help(); dump the actions instead.
PROBE = f"""
import argparse, json, re, runpy, sys

def dump(self, file=None):
    formatter = self._get_formatter()
    rows = []
    for action in self._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = formatter._expand_help(action) if action.help else ""
        text = re.sub(r"\\s*\\(default: [^()]*\\)$", "", text.strip())
        rows.append({{
            "flags": [o for o in action.option_strings if "-" not in o.lstrip("-")] or action.option_strings,
            "dest": action.dest,
            "default": action.default,
            "help": text,
            "negative": isinstance(action, argparse._StoreFalseAction),
        }})
    print({MARK!r} + json.dumps(rows, default=repr))

argparse.ArgumentParser.print_help = dump
path = sys.argv[1]
sys.argv = [path, "--help"]
sys.path.insert(0, str(__import__("pathlib").Path(path).parent))
runpy.run_path(path, run_name="__main__")
"""


def probe(recipe: Path) -> list[dict] | str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(recipe)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    return (proc.stderr or proc.stdout).strip()[-2000:] or f"exit status {proc.returncode}"


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def default_text(value) -> str:
    if value is None or value == [] or value == "":
        return ""
    return f"`{cell(value)}`"


def page(recipe: Path, rows: list[dict] | str) -> str:
    doc = ast.get_docstring(ast.parse(recipe.read_text())) or ""
    out = [f"# `recipes/{recipe.name}`\n"]
    if doc:
        summary, _, rest = doc.partition("\n\n")
        out.append(summary.strip() + "\n")
        if rest.strip():
            # a backslash at a line end inside the docstring joins the lines: show them split again
            usage = re.sub(r"(\S) {2,}(?=--)", "\\1 \\\\\n        ", rest.strip("\n"))
            out.append("```text\n" + usage + "\n```\n")
    if isinstance(rows, str):
        out.append(f"!!! failure\n    `python recipes/{recipe.name} --help` failed:\n\n    ```text\n")
        out.extend(f"    {line}\n" for line in rows.splitlines())
        out.append("    ```\n")
        return "\n".join(out)
    out.append(
        f"Generated from the recipe's own parser when the site is built; `python recipes/{recipe.name} --help` "
        "prints the same list. Any option can also come from `--config file.yaml` ([Recipes](index.md)).\n"
    )
    negatives = {row["dest"] for row in rows if row["negative"]}
    out.append("| option | default | what it does |\n|---|---|---|")
    for row in rows:
        if row["negative"]:
            continue
        flags = ", ".join(f"`{flag}`" for flag in row["flags"])
        if row["dest"] in negatives:
            flags += f" (off: `--no_{row['dest']}`)"
        out.append(f"| {flags} | {default_text(row['default'])} | {cell(row['help'])} |")
    return "\n".join(out) + "\n"


recipes = sorted(path for path in RECIPES.glob("*.py") if not path.name.startswith("_"))
with ThreadPoolExecutor(max_workers=2) as pool:
    results = dict(zip(recipes, pool.map(probe, recipes)))

for recipe, rows in results.items():
    if isinstance(rows, str):
        log.warning("recipes/%s --help failed: %s", recipe.name, rows.splitlines()[-1] if rows else "")
    with mkdocs_gen_files.open(f"recipes/{recipe.stem}.md", "w") as fd:
        fd.write(page(recipe, rows))
    mkdocs_gen_files.set_edit_path(f"recipes/{recipe.stem}.md", recipe.relative_to(ROOT))

with mkdocs_gen_files.open("recipes/SUMMARY.md", "w") as nav_file:
    nav_file.write("* [Recipes](index.md)\n")
    nav_file.writelines(f"* [{recipe.name}]({recipe.stem}.md)\n" for recipe in recipes)
