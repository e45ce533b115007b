"""Generate one API reference page per module of `nlptransfer/` (mkdocs-gen-files + mkdocs-literate-nav).

Walks the package tree at build time, so a module that moves, appears or disappears needs no edit to
the docs: its page follows it. The pages hold only a `::: module` directive; mkdocstrings (griffe, static
analysis, nothing is imported) renders the docstrings.
"""

import ast
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nlptransfer"

nav = mkdocs_gen_files.Nav()


def only_reexports(init: Path) -> bool:
    """True when a package's __init__.py defines nothing of its own (imports, __all__ and a docstring only)."""
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstring
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if all(isinstance(t, ast.Name) and t.id.startswith("__") for t in targets):
                continue  # __all__, __version__
        return False
    return True


for path in sorted(PACKAGE.rglob("*.py")):
    module_path = path.relative_to(ROOT).with_suffix("")
    doc_path = path.relative_to(ROOT).with_suffix(".md")
    full_doc_path = Path("reference", doc_path)
    parts = tuple(module_path.parts)
    if any(part.startswith("_") and part != "__init__" for part in parts) or "__pycache__" in parts:
        continue  # private modules and __main__
    if parts[-1] == "__init__":
        parts = parts[:-1]
        doc_path = doc_path.with_name("index.md")
        full_doc_path = full_doc_path.with_name("index.md")
    nav[parts] = doc_path.as_posix()
    with mkdocs_gen_files.open(full_doc_path, "w") as fd:
        identifier = ".".join(parts)
        if path.name == "__init__.py" and only_reexports(path):
            # A package whose __init__ only re-exports: its docstring here, each object once, in its own module.
            fd.write(f"::: {identifier}\n    options:\n      members: false\n\n")
            fd.write("The names it re-exports are documented in the modules that define them (see the menu).\n")
        else:
            fd.write(f"::: {identifier}\n")
    mkdocs_gen_files.set_edit_path(full_doc_path, path.relative_to(ROOT))

with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as nav_file:
    nav_file.writelines(nav.build_literate_nav())
