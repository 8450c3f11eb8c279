"""The sample pipeline's computations, as plain functions (no Dagster here).

Deterministic and offline: concepts are paired, each pair is crossed with the active link
templates, the link tasks with the active essay templates, the essay tasks with the active
evaluation templates. Template text files are read from the paths the CSVs name.
"""

from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path
from typing import Any

Row = dict[str, str]

CONCEPTS_CSV = "concepts/concepts_metadata.csv"
LINK_TEMPLATES_CSV = "link_templates.csv"
ESSAY_TEMPLATES_CSV = "essay_templates.csv"
EVALUATION_TEMPLATES_CSV = "evaluation_templates.csv"


FEEDBACK_GLOB = "feedback/*.txt"


class MissingRawFile(Exception):
    pass


class MalformedRawFile(Exception):
    pass


def load_csv(root: Path, rel_path: str, *, missing_ok: bool = True) -> list[Row]:
    """Rows of a raw CSV. A missing file is an empty table (documented choice: a removed
    raw file empties what depends on it) unless ``missing_ok`` is False."""
    path = root / rel_path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return []
        raise MissingRawFile(f"{path} does not exist") from None
    rows = []
    reader = csv.DictReader(io.StringIO(text))
    for row in reader:
        if None in row or None in row.values():
            raise MalformedRawFile(
                f"{path} line {reader.line_num}: expected {len(reader.fieldnames or [])} fields "
                f"({', '.join(reader.fieldnames or [])}); fix the row"
            )
        rows.append(dict(row))
    return rows


def _active(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.get("active", "true").strip().lower() == "true"]


def _template_text(root: Path, row: Row) -> str:
    path = root / row["template_file"]
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingRawFile(
            f"template {row.get('template_id')!r} names {row['template_file']}, which does not "
            "exist under the raw root; fix the CSV or add the file"
        ) from None


def build_concepts(root: Path, rows: list[Row]) -> list[dict[str, Any]]:
    out = []
    for row in sorted(rows, key=lambda r: r["concept_id"]):
        description = ""
        if row.get("description_file"):
            desc_path = root / row["description_file"]
            if desc_path.is_file():
                description = desc_path.read_text(encoding="utf-8").strip()
        out.append(
            {
                "concept_id": row["concept_id"],
                "name": row["name"],
                "category": row.get("category", ""),
                "description": description,
            }
        )
    return out


def build_concept_pairs(concepts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "pair_id": f"{a['concept_id']}-{b['concept_id']}",
            "concept_a": a["name"],
            "concept_b": b["name"],
        }
        for a, b in itertools.combinations(concepts, 2)
    ]


def build_link_tasks(
    root: Path, pairs: list[dict[str, Any]], templates: list[Row]
) -> list[dict[str, Any]]:
    tasks = []
    for template in _active(templates):
        text = _template_text(root, template)
        for pair in pairs:
            tasks.append(
                {
                    "task_id": f"link:{template['template_id']}:{pair['pair_id']}",
                    "pair_id": pair["pair_id"],
                    "template_id": template["template_id"],
                    "prompt": text.format(concept_a=pair["concept_a"], concept_b=pair["concept_b"]),
                }
            )
    return tasks


def build_essay_tasks(
    root: Path,
    pairs: list[dict[str, Any]],
    link_tasks: list[dict[str, Any]],
    templates: list[Row],
) -> list[dict[str, Any]]:
    links_by_pair: dict[str, list[str]] = {}
    for task in link_tasks:
        links_by_pair.setdefault(task["pair_id"], []).append(task["task_id"])
    tasks = []
    for template in _active(templates):
        text = _template_text(root, template)
        for pair in pairs:
            links = "\n".join(f"- {t}" for t in links_by_pair.get(pair["pair_id"], []))
            tasks.append(
                {
                    "task_id": f"essay:{template['template_id']}:{pair['pair_id']}",
                    "template_id": template["template_id"],
                    "prompt": text.format(
                        concept_a=pair["concept_a"], concept_b=pair["concept_b"], links=links
                    ),
                }
            )
    return tasks


def build_evaluation_tasks(
    root: Path, essay_tasks: list[dict[str, Any]], templates: list[Row]
) -> list[dict[str, Any]]:
    tasks = []
    for template in _active(templates):
        text = _template_text(root, template)
        for essay in essay_tasks:
            tasks.append(
                {
                    "task_id": f"eval:{template['template_id']}:{essay['task_id']}",
                    "template_id": template["template_id"],
                    "prompt": text.format(essay=f"<output of {essay['task_id']}>"),
                }
            )
    return tasks


def feedback_words(root: Path, rel_path: str) -> dict[str, Any]:
    """One feedback file: its words."""
    text = (root / rel_path).read_text(encoding="utf-8")
    return {"file": rel_path, "words": len(text.split())}


def build_feedback_digest(root: Path) -> list[dict[str, Any]]:
    """Every feedback file and its word count, sorted by file."""
    folder = root / "feedback"
    files = sorted(p for p in folder.glob("*.txt") if p.is_file()) if folder.is_dir() else []
    return [feedback_words(root, p.relative_to(root).as_posix()) for p in files]
