"""Judge rubric templates: loading, validation and filling.

The three templates live in one YAML file so that changing the rubric is a data change, not a code
change. Each template starts with a marker line (``### Criterion: <name>``) because a judge server
only ever sees the filled prompt text: the marker is how the offline stand-in judge (and anyone
reading a cached prompt) knows which rubric is being applied.
"""

from __future__ import annotations

import importlib.util
import re
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


from axbench_hypersteer.model.config import ConfigError, read_yaml_mapping

CRITERIA: tuple[str, ...] = ("concept", "instruction", "fluency")
# The str.format fields each criterion's template must use (and may not go beyond).
REQUIRED_FIELDS: dict[str, frozenset[str]] = {
    "concept": frozenset({"concept", "sentence"}),
    "instruction": frozenset({"instruction", "sentence"}),
    "fluency": frozenset({"sentence"}),
}
MARKER_PREFIX = "### Criterion:"
_MARKER_RE = re.compile(r"^###\s*Criterion:\s*(\w+)\s*$", re.MULTILINE)
_TAG_FIELDS = {"concept": "concept", "instruction": "instruction", "response": "sentence"}


# AxBench's own rubric: where its judge keeps the three templates (module inside the installed
# ``axbench`` package, and attribute per criterion). Only names live here, never the text.
AXBENCH_TEMPLATES_MODULE = ("evaluators", "prompt_templates.py")
AXBENCH_TEMPLATE_NAMES: dict[str, str] = {
    "concept": "UNIDIRECTIONAL_PAIRWISE_EVALUATION_CONCEPT_RELEVANCE_TEMPLATE",
    "instruction": "UNIDIRECTIONAL_PAIRWISE_EVALUATION_INSTRUCTION_RELEVANCE_TEMPLATE",
    "fluency": "UNIDIRECTIONAL_PAIRWISE_EVALUATION_FLUENCY_TEMPLATE",
}
RUBRICS = ("auto", "axbench", "package")


@dataclass(frozen=True)
class Rubric:
    """The judge templates in use and where they came from (recorded with every score)."""

    name: str  # "axbench" (comparable with AxBench's tables) or "package" (our own wording)
    source: str  # the file the templates were read from
    templates: dict[str, str]

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "source": self.source}


def axbench_templates_file() -> Path | None:
    """AxBench's judge-template module, located without importing ``axbench`` (its
    ``__init__`` imports every method and their heavy dependencies); None if not installed."""
    try:
        spec = importlib.util.find_spec("axbench")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root).joinpath(*AXBENCH_TEMPLATES_MODULE)
        if path.is_file():
            return path
    return None


def load_axbench_templates(path: Path) -> dict[str, str]:
    """AxBench's three rubric templates, imported from its module at run time."""
    spec = importlib.util.spec_from_file_location("_axbench_judge_templates", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # a broken install: say which file, not a traceback
        raise ConfigError(f"{path}: cannot import AxBench's judge templates ({err})") from None
    templates = {}
    for criterion, name in AXBENCH_TEMPLATE_NAMES.items():
        template = getattr(module, name, None)
        if not isinstance(template, str):
            raise ConfigError(f"{path}: has no string {name} (AxBench's {criterion} rubric)")
        fields = _fields_of(template, f"{path}:{name}")
        if fields != REQUIRED_FIELDS[criterion]:
            raise ConfigError(f"{path}:{name}: template fields are {sorted(fields)}, expected "
                              f"{sorted(REQUIRED_FIELDS[criterion])}")
        templates[criterion] = template
    return templates


def resolve_rubric(rubric: str = "auto", templates_path: str | Path | None = None) -> Rubric:
    """Which templates the judge uses. ``auto``: AxBench's own when ``axbench`` is installed
    (only those give scores comparable with AxBench's published tables), else the package's;
    an explicit ``templates_path`` is always used as given."""
    if rubric not in RUBRICS:
        raise ConfigError(f"rubric: {rubric!r} is not one of {list(RUBRICS)}")
    if templates_path is not None:
        return Rubric("custom", str(templates_path), load_templates(templates_path))
    if rubric == "package":
        path = default_templates_path()
        return Rubric("package", str(path), load_templates(path))
    found = axbench_templates_file()
    if found is None:
        if rubric == "axbench":
            raise ConfigError("rubric: 'axbench' needs AxBench installed (import axbench), "
                              "which is not importable here")
        path = default_templates_path()
        return Rubric("package", str(path), load_templates(path))
    return Rubric("axbench", str(found), load_axbench_templates(found))


def default_templates_path() -> Path:
    return Path(str(resources.files("axbench_hypersteer") / "resources" / "judge_prompts.yaml"))


def _fields_of(template: str, where: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ConfigError(f"{where}: not a valid format template ({err})") from None


def load_templates(path: str | Path | None = None) -> dict[str, str]:
    """Read and check the rubric file; a bad template fails here, before any paid judge call."""
    path = Path(path) if path is not None else default_templates_path()
    data = read_yaml_mapping(path, "judge prompt file")
    unknown = sorted(set(data) - set(CRITERIA))
    missing = [c for c in CRITERIA if c not in data]
    if unknown or missing:
        raise ConfigError(
            f"{path}: criteria must be exactly {list(CRITERIA)}; "
            f"missing {missing}, unknown {unknown}"
        )
    templates: dict[str, str] = {}
    for criterion in CRITERIA:
        template = data[criterion]
        where = f"{path}:{criterion}"
        if not isinstance(template, str):
            raise ConfigError(f"{where}: template must be a string, got {type(template).__name__}")
        fields = _fields_of(template, where)
        if fields != REQUIRED_FIELDS[criterion]:
            raise ConfigError(
                f"{where}: template fields are {sorted(fields)}, expected "
                f"{sorted(REQUIRED_FIELDS[criterion])}"
            )
        first_line = template.strip().splitlines()[0] if template.strip() else ""
        if detect_criterion(first_line) != criterion:
            raise ConfigError(f"{where}: first line must be '{MARKER_PREFIX} {criterion}'")
        if "Rating: [[" not in template:
            raise ConfigError(f"{where}: template must ask for the answer as 'Rating: [[score]]'")
        templates[criterion] = template
    return templates


def build_prompt(
    templates: dict[str, str],
    criterion: str,
    *,
    sentence: str,
    concept: str | None = None,
    instruction: str | None = None,
) -> str:
    """Fill one rubric. ``str.format`` only parses the template, so braces in the generated text are
    safe."""
    if criterion not in templates:
        raise KeyError(f"judge criterion {criterion!r} not in templates {sorted(templates)}")
    values = {"sentence": "" if sentence is None else str(sentence)}
    if "concept" in REQUIRED_FIELDS[criterion]:
        values["concept"] = "" if concept is None else str(concept)
    if "instruction" in REQUIRED_FIELDS[criterion]:
        values["instruction"] = "" if instruction is None else str(instruction)
    return templates[criterion].format(**values)


def detect_criterion(prompt: str) -> str | None:
    """The criterion named by the first marker line, or None. The first one wins because the
    marker is the template's first line, so a generated sentence further down cannot override
    it."""
    match = _MARKER_RE.search(prompt)
    if match is None or match.group(1) not in CRITERIA:
        return None
    return match.group(1)


def extract_fields(prompt: str) -> dict[str, str]:
    """Recover the filled-in inputs from a prompt built with the tagged templates.

    Inputs other than the response are short and matched lazily; the response is matched up to its
    *last* closing tag so that a generation containing the tag text is kept whole.
    """
    out: dict[str, str] = {}
    for tag, field in _TAG_FIELDS.items():
        lazy = "" if tag == "response" else "?"
        match = re.search(rf"<{tag}>\n(.*{lazy})\n</{tag}>", prompt, re.DOTALL)
        if match is not None:
            out[field] = match.group(1)
    return out
