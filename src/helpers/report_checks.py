"""Checks a results folder's pages as a reviewer would read them
(``python -m helpers.report_checks results/phantom``): the landing page
(``index.html``), the step reports (``notebooks/*.html``), the Markdown
tables (``figures/*.md``, ``sweep/*.md``) and a comparison page.

1. **links**: every local link and image resolves (a file, and the
   ``#anchor`` when one is named);
2. **numbers**: every number the landing page quotes equals the one in its
   table. A generated number says where it comes from (:func:`traced`):
   ``<span data-table="sweep/criteria.csv" data-row='{"size": 4, "group":
   "diffusion", "criterion": "…"}' data-column="fraction" data-scale="100"
   data-format=".0f">64</span>``; the check reads the table and formats the
   value the same way. A JSON or YAML source names ``data-key`` (a dotted
   path) instead of row and column. A number that is not traced is reported
   unless it sits in a link, ``<code>``, a caption or an element marked
   ``data-untraced`` (constants such as "90 %"). Pages made before tracing
   (no ``data-table`` at all) are read with the sentences of
   :mod:`helpers.sweep_figures` as the trace, and only their finding
   section is checked;
3. **facts**: no page mentions a model, training-set size, sample count or
   setting the run did not have (its resolved settings in
   ``notebooks/NN_name.params.yaml``, its sizes in ``data/sizes.json``);
   models are looked for in what the run wrote, not in a step report's own
   documentation, which names every model the step can run.

Exit status 0 when nothing is found, 1 otherwise, 2 for a missing folder.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .layout import Results, Run

#: a quoted number (thin spaces and commas group digits); "01", "n00004" are names, not quotes
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?!0\d)\d+(?:[,\s]\d{3}(?!\d))*(?:\.\d+)?(?![\w])")
#: elements whose numbers are not quotes of a result
EXEMPT_TAGS = {"a", "code", "pre", "figcaption", "title", "h1", "script", "style", "summary"}
MODEL_WORDS = {"stylegan": r"\bstyle ?gan\b", "diffusion": r"\bdiffusion\b",
               "optimal_denoiser": r"\boptimal[ _]denoiser\b"}


@dataclass
class Problem:
    page: str
    check: str       # links | numbers | facts
    message: str


@dataclass
class Facts:
    """What the run had (None: unknown, not checked)."""
    models: list[str] | None = None
    samples: dict[str, int] = field(default_factory=dict)       # model -> images sampled per size
    sizes: list[int] | None = None                              # the sweep's training-set sizes
    subjects: list[int] | None = None                           # subjects per size
    n_train: int | None = None                                  # the full training split
    n_train_subjects: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)      # step section -> resolved settings
    has_results: bool = False                                   # step 05 wrote something

    @property
    def train_sizes(self) -> set[int]:
        return {*(self.sizes or []), *([self.n_train] if self.n_train else [])}


# --------------------------------------------------------------------------
# Tracing a generated number to its table
# --------------------------------------------------------------------------

def traced(value: float | int, table: str, column: str | None = None, row: Mapping | None = None,
           key: str | None = None, fmt: str = "g", scale: float = 1.0) -> str:
    """The HTML of a number quoted from ``table`` (a path relative to the
    results folder), with the attributes :func:`check_numbers` reads back:
    ``row`` (column → value, one row) and ``column`` for a CSV, ``key`` (a
    dotted path) for JSON/YAML."""
    attrs = {"data-table": table, "data-format": fmt}
    if scale != 1.0:
        attrs["data-scale"] = repr(scale)
    if key is not None:
        attrs["data-key"] = key
    else:
        attrs["data-column"] = column
        attrs["data-row"] = json.dumps(dict(row or {}), ensure_ascii=False)
    text = _format(value, fmt, scale)
    return "<span " + " ".join(f'{k}="{html.escape(str(v))}"' for k, v in attrs.items()) + f">{text}</span>"


def _lookup(results: Path, table: str, column: str | None, row: Mapping | None, key: str | None) -> Any:
    path = results / table
    if not path.is_file():
        raise LookupError(f"its table {table} does not exist")
    if key is not None:
        if path.suffix == ".json":
            obj = json.loads(path.read_text())
        else:
            import yaml

            obj = yaml.safe_load(path.read_text())
        for part in key.split("."):
            if isinstance(obj, list) and part.isdigit():
                obj = obj[int(part)]
            elif isinstance(obj, Mapping) and part in obj:
                obj = obj[part]
            else:
                raise LookupError(f"{table} has no key {key}")
        return obj
    import pandas as pd

    frame = pd.read_csv(path)
    if column not in frame.columns:
        raise LookupError(f"{table} has no column {column!r}")
    mask = pd.Series(True, index=frame.index)
    for name, wanted in (row or {}).items():
        if name not in frame.columns:
            raise LookupError(f"{table} has no column {name!r} (data-row)")
        mask &= frame[name].astype(str) == str(wanted)
    if int(mask.sum()) != 1:
        raise LookupError(f"{table}: {int(mask.sum())} rows match {dict(row or {})}, expected exactly 1")
    value = frame.loc[mask, column].iloc[0]
    return value.item() if hasattr(value, "item") else value


def _format(value: Any, fmt: str, scale: float) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value * scale if scale != 1.0 else value, fmt)
    return str(value)


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\u2009", " ").replace("\xa0", " ")).strip()


def check_numbers(page: Path, results: Path) -> list[Problem]:
    """Every number the landing page quotes equals its table's (module doc, 2)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(page.read_text(), "html.parser")
    name = page.relative_to(results).as_posix()
    problems = []
    spans = soup.select("[data-table]")
    for span in spans:
        shown = _clean(span.get_text())
        try:
            row = json.loads(span["data-row"]) if span.get("data-row") else None
            value = _lookup(results, span["data-table"], span.get("data-column"), row, span.get("data-key"))
            expected = _format(value, span.get("data-format", "g"), float(span.get("data-scale", 1.0)))
        except (LookupError, ValueError, KeyError, IndexError) as err:
            problems.append(Problem(name, "numbers", f"'{shown}' cannot be traced: {err}"))
            span.decompose()
            continue
        if shown != expected:
            where = span.get("data-key") or f"{span.get('data-row')} {span.get('data-column')}"
            problems.append(Problem(name, "numbers", f"quotes {shown} where {span['data-table']} ({where}) "
                                                     f"gives {expected}"))
        span.decompose()
    scope = soup.find("main") or soup
    if not spans:  # a page made before tracing: its finding section, traced by the sweep's sentences
        scope, legacy = _finding_section(soup), _legacy_sentences(results)
        if scope is None:
            return problems
        for item in scope.find_all("li"):
            text = _clean(item.get_text())
            if text in legacy:
                item.decompose()
            elif _NUMBER.search(text):
                problems.append(Problem(name, "numbers", f"'{text[:160]}' equals no sentence the run's sweep tables "
                                                         "give (sweep/capacity.csv, sweep/criteria.csv)"))
                item.decompose()
    for tag in scope.find_all(list(EXEMPT_TAGS)):
        tag.decompose()
    for tag in scope.select("[data-untraced]"):
        tag.decompose()
    for text in scope.find_all(string=True):
        for match in _NUMBER.finditer(str(text)):
            context = _clean(str(text))
            problems.append(Problem(name, "numbers", f"{match.group().strip()} is not traced to a table: "
                                                     f"'{context[:120]}'"))
    return problems


def _finding_section(soup):
    """The elements between the heading 'The finding' and the next heading, wrapped."""
    from bs4 import BeautifulSoup

    heading = next((h for h in soup.find_all(["h2", "h3"]) if "finding" in h.get_text().lower()), None)
    if heading is None:
        return None
    parts = []
    for sibling in heading.find_next_siblings():
        if sibling.name in ("h1", "h2"):
            break
        if sibling.name == "div" and "figures" in (sibling.get("class") or []):
            continue
        parts.append(str(sibling))
    return BeautifulSoup("<div>" + "".join(parts) + "</div>", "html.parser")


def _legacy_sentences(results: Path) -> set[str]:
    """The finding's sentences as helpers.sweep_figures writes them from this
    run's tables (the landing page's trace before data attributes)."""
    from . import sweep_figures

    try:
        tables = sweep_figures.load_sweep(results)
        if tables is None:
            return set()
        lines = sweep_figures.capacity_text(tables["capacity"], tables["criteria"]).splitlines()
        lines += sweep_figures.comparison_text(tables["criteria"]).splitlines()
        if tables.get("fit") is not None:  # the page may give the verdicts at matched fit
            lines += sweep_figures.comparison_text(tables["criteria"], fit=tables["fit"]).splitlines()
    except (OSError, KeyError, ValueError, IndexError, TypeError):  # tables incomplete: nothing traces the page
        return set()
    out = set()
    for line in lines:
        text = line.removeprefix("- ").strip()
        # the page shows Markdown rendered: `code` and escapes become text
        out.add(_clean(text.replace("`", "")))
    return out


# --------------------------------------------------------------------------
# Links
# --------------------------------------------------------------------------

def _ids(path: Path) -> set[str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(path.read_text(), "html.parser")
    return {t["id"] for t in soup.find_all(id=True)} | {t["name"] for t in soup.find_all("a", attrs={"name": True})}


def _targets(page: Path) -> list[tuple[str, str]]:
    """(kind, target) of every link and image on a page."""
    if page.suffix == ".md":
        text = page.read_text()
        return [("image" if m.group(1) else "link", m.group(2).split()[0] if m.group(2).strip() else "")
                for m in re.finditer(r"(!?)\[[^\]]*\]\(([^)]*)\)", text)]
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(page.read_text(), "html.parser")
    out = [("link", a["href"]) for a in soup.find_all(["a", "link"], href=True)]
    out += [("image", t["src"]) for t in soup.find_all(["img", "source", "script", "iframe"], src=True)]
    return out


def check_links(page: Path, results: Path, id_cache: dict[Path, set[str]] | None = None) -> list[Problem]:
    """Every local link and image of ``page`` resolves (module doc, 1)."""
    id_cache = {} if id_cache is None else id_cache
    name = page.relative_to(results).as_posix() if page.is_relative_to(results) else str(page)
    problems = []
    for kind, target in _targets(page):
        parts = urlsplit(target)
        if parts.scheme or target.startswith("//"):  # http(s), mailto, data: not local
            continue
        path = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
        if not path.exists():
            problems.append(Problem(name, "links", f"{kind} {target} does not resolve (no {_short(path, results)})"))
            continue
        if parts.fragment and path.suffix == ".html":
            if path not in id_cache:
                id_cache[path] = _ids(path)
            if not {parts.fragment, unquote(parts.fragment)} & id_cache[path]:  # as browsers: raw, then decoded
                problems.append(Problem(name, "links", f"link {target}: no anchor #{unquote(parts.fragment)} "
                                                       f"in {_short(path, results)}"))
    return problems


def _short(path: Path, results: Path) -> str:
    try:
        return path.resolve().relative_to(results.resolve()).as_posix()
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------
# Facts: what the run had
# --------------------------------------------------------------------------

def _read(path: Path) -> Any:
    import yaml

    if not path.is_file():
        return None
    return json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())


def run_facts(results: Path) -> Facts:
    """The run's models, sizes, sample counts and settings, from its own files."""
    facts = Facts()
    files = Results(results)
    for params in sorted(files.notebooks.glob("[0-9][0-9]_*.params.yaml")):
        data = _read(params) or {}
        facts.settings[params.name.split(".")[0][3:]] = data.get("settings") or {}
    sample = facts.settings.get("sample") or {}
    if "models" in sample:
        facts.models = list(sample["models"])
        facts.samples = {m: int(sample[f"n_{m}"]) for m in facts.models if f"n_{m}" in sample}
    sizes = _read(files.data.sizes)
    if sizes and sizes.get("sizes"):
        facts.sizes = sorted({int(r["size"]) for r in sizes["sizes"]})
        facts.subjects = sorted({int(r["n_subjects"]) for r in sizes["sizes"] if "n_subjects" in r})
    meta = _read(files.data.meta) or {}
    facts.n_train, facts.n_train_subjects = meta.get("n_train"), meta.get("n_train_subjects")
    facts.has_results = files.sweep.criteria.is_file() or files.summary.is_file() or \
        any(Run(p).summary.is_file() for p in files.size_runs.glob("*"))
    return facts


def page_texts(page: Path) -> tuple[str, str]:
    """What a reader reads (prose and outputs, not the folded code), and the
    part of it this run wrote: without a step report's own Markdown cells (the
    step's documentation, the same in every run). One parse for both."""
    if page.suffix == ".md":
        text = page.read_text()
        return text, text
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(page.read_text(), "html.parser")
    for tag in soup.select("details.input, script, style, title"):
        tag.decompose()
    text = _clean(soup.get_text(" "))
    for tag in soup.select("div.text_cell"):
        tag.decompose()
    return text, _clean(soup.get_text(" "))


def _every(n: int) -> str:
    return "every slice" if n == 1 else "every " + {2: "2nd", 3: "3rd"}.get(n, f"{n}th") + " slice"


def check_facts(page: Path, results: Path, facts: Facts) -> list[Problem]:
    """No model, size, sample count or setting the run did not have (module doc, 3)."""
    name = page.relative_to(results).as_posix()
    text, written = page_texts(page)
    problems: list[Problem] = []

    def say(message: str) -> None:
        problems.append(Problem(name, "facts", message))

    if facts.models is not None:
        # a step's documentation names every model the step can run; what the run wrote names only its own
        for model, pattern in MODEL_WORDS.items():
            if model not in facts.models and re.search(pattern, written, re.I):
                say(f"mentions {model}, which this run did not sample (models: {', '.join(facts.models)})")
    if facts.sizes is not None:
        allowed = facts.train_sizes
        for m in re.finditer(r"\b(\d[\d ,]*) training (?:images|slices)\b", text):
            n = int(re.sub(r"[ ,]", "", m.group(1)))
            if n not in allowed:
                say(f"'{m.group()}': the run's training sets have {_list(sorted(allowed))} images")
        for m in re.finditer(r"\bsizes? ((?:\d+, )*\d+(?:,? and \d+)?) (?:training )?(?:images|slices)\b", text):
            quoted = [int(x) for x in re.findall(r"\d+", m.group(1))]
            if set(quoted) - allowed:
                say(f"'{m.group()}': the run's sizes are {_list(facts.sizes)}")
        if re.search(r"no size sweep", text, re.I):
            say(f"says there is no size sweep; the run swept {_list(facts.sizes)} training images")
    if facts.samples:
        for m in re.finditer(r"\b([1-9][\d ,]*) (?:synthetic images|samples) (?:per|of each|from each) "
                             r"(?:model|size|generator)\b", text):
            n = int(re.sub(r"[ ,]", "", m.group(1)))
            if n not in set(facts.samples.values()):
                say(f"'{m.group()}': the run sampled {_list(sorted(set(facts.samples.values())))} images per model")
    if facts.has_results and re.search(r"no correlation results yet", text, re.I):
        say("says 'No correlation results yet' though step 05's results are there")
    prediction = (facts.settings.get("train_diffusion") or {}).get("prediction_type")
    if prediction == "v_prediction" and re.search(r"\bpredicts (?:the noise|ε)", text):
        say("says the diffusion model predicts the noise ε; its settings say v-prediction (prediction_type)")
    if prediction == "epsilon" and re.search(r"\bpredicts (?:v\b|the velocity)", text):
        say("says the diffusion model predicts v; its settings say ε (prediction_type: epsilon)")
    stride = (facts.settings.get("prepare_data") or {}).get("slice_stride")
    if stride:
        for m in re.finditer(r"\bevery (\d+)(?:st|nd|rd|th)\.? slice\b", text, re.I):
            if int(m.group(1)) != stride:
                say(f"'{m.group()}': the run kept {_every(stride)} (slice_stride {stride})")
        if stride != 1 and re.search(r"every slice is (?:used|kept)", text, re.I):
            say(f"says every slice is used; the run kept {_every(stride)} (slice_stride {stride})")
    if page.suffix == ".html":  # "figures for it are left out", and there they are
        shown = " ".join(src for kind, src in _targets(page) if kind == "image")
        for m in re.finditer(r"\b(stylegan|diffusion|optimal_denoiser)\b(?:(?!\. ).){0,200}?figures for it are left out",
                             text, re.I):
            if re.search(rf"_{m.group(1).lower()}[_.]", shown):
                say(f"says figures for {m.group(1)} are left out, then shows figures of {m.group(1)}")
    if page.suffix == ".md":
        problems += _table_facts(page, name, facts)
    return problems


def _list(values: Iterable[int]) -> str:
    values = list(values)
    return ", ".join(map(str, values)) if values else "none"


def _table_facts(page: Path, name: str, facts: Facts) -> list[Problem]:
    """A Markdown table's columns n_train, model/group and n against the run."""
    problems, header = [], None
    for line in page.read_text().splitlines():
        s = line.strip()
        if not (s.startswith("|") and s.endswith("|")):
            header = None
            continue
        cells = [c.strip() for c in s[1:-1].split("|")]
        if header is None:
            header = cells
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        row = dict(zip(header, cells))
        model = row.get("model") or row.get("group")
        if "n_train" in row and facts.sizes is not None and row["n_train"].isdigit() \
                and int(row["n_train"]) not in facts.train_sizes:
            problems.append(Problem(name, "facts", f"row {cells[:3]}: n_train {row['n_train']}, the run's training "
                                                   f"sets have {_list(sorted(facts.train_sizes))} images"))
        if model in facts.samples and row.get("n", "").isdigit() and int(row["n"]) != facts.samples[model]:
            problems.append(Problem(name, "facts", f"row {cells[:3]}: {model} n {row['n']}, the run sampled "
                                                   f"{facts.samples[model]} images of {model}"))
        if facts.models is not None and model in MODEL_WORDS and model not in facts.models:
            problems.append(Problem(name, "facts", f"row {cells[:3]}: model {model}, which the run did not sample"))
    # one message per kind of mismatch is enough to read; keep the first three of each
    seen: dict[str, int] = {}
    kept = []
    for p in problems:
        kind = re.sub(r"row \[.*?\]: ", "", re.sub(r"\d+", "#", p.message))
        seen[kind] = seen.get(kind, 0) + 1
        if seen[kind] <= 3:
            kept.append(p)
    for kind, n in seen.items():
        if n > 3:
            kept.append(Problem(name, "facts", f"… and {n - 3} more rows like that ({kind[:80]})"))
    return kept


# --------------------------------------------------------------------------
# A results folder
# --------------------------------------------------------------------------

def pages(results: Path) -> list[Path]:
    """The pages a reader opens: landing page, step reports, Markdown tables, a comparison page."""
    files = Results(results)
    found = [files.index] if files.index.is_file() else []
    found += sorted(files.notebooks.glob("*.html"))
    found += sorted(results.glob("*.html"))
    for folder in (files.figures, files.sweep.folder, results):
        found += sorted(folder.glob("*.md"))
    return list(dict.fromkeys(p for p in found if p.name != "README.md"))


COMPARE_TABLE = "compare_datasets.csv"


def check_compare(results: Path) -> list[Problem]:
    """A comparison folder (``./runall.sh compare``): every dataset row names a
    run that exists next to it, and its held-out count is that run's."""
    import pandas as pd

    table = pd.read_csv(results / COMPARE_TABLE)
    problems = []
    for name, part in table.groupby("dataset", sort=False):
        run, _, size = str(name).partition("/")
        summary = (Results(results.parent / run).size_run(size) if size else Run(results.parent / run)).summary
        if not summary.is_file():
            problems.append(Problem(COMPARE_TABLE, "facts", f"row '{name}': no such run "
                                                            f"({_short(summary, results.parent)} does not exist)"))
            continue
        n_test = (_read(summary) or {}).get("n_test")
        held = part[part["model"] == "real_test"]["n"] if "model" in part and "n" in part else []
        for n in held:
            if n_test is not None and int(n) != int(n_test):
                problems.append(Problem(COMPARE_TABLE, "facts", f"row '{name}' real_test: n {n}, "
                                                                f"the run has {n_test} held-out images"))
    return problems


def check_results(results: str | Path) -> list[Problem]:
    """Every check on every page of a results folder."""
    results = Path(results)
    if not results.is_dir():
        raise FileNotFoundError(f"results folder {results} does not exist (expected e.g. results/phantom)")
    facts = run_facts(results)
    problems: list[Problem] = []
    cache: dict[Path, set[str]] = {}
    files = Results(results)
    if not files.index.is_file() and files.notebooks.is_dir():
        problems.append(Problem(files.index.name, "links", "the run has no landing page"))
    if (results / COMPARE_TABLE).is_file():
        problems += check_compare(results)
    for page in pages(results):
        problems += check_links(page, results, cache)
        if page.name == files.index.name:
            problems += check_numbers(page, results)
        if facts.models is not None or facts.sizes is not None:
            problems += check_facts(page, results, facts)
    return problems


def format_problems(results: Path, problems: list[Problem]) -> str:
    by_check: dict[str, int] = {}
    for p in problems:
        by_check[p.check] = by_check.get(p.check, 0) + 1
    counts = ", ".join(f"{n} {c}" for c, n in sorted(by_check.items())) or "none"
    lines = [f"report checks: {results}: {len(problems)} problem(s) ({counts})"]
    page = None
    for p in sorted(problems, key=lambda p: (p.page, p.check)):
        if p.page != page:
            page = p.page
            lines.append(f"  {page}:")
        lines.append(f"    [{p.check}] {p.message}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.report_checks",
        description="Check a results folder's landing page and reports: links and images resolve, quoted "
                    "numbers equal their tables, no page mentions what the run did not have.")
    parser.add_argument("results", nargs="+", help="results folder(s), e.g. results/phantom")
    args = parser.parse_args(argv)
    status = 0
    for folder in args.results:
        try:
            problems = check_results(folder)
        except FileNotFoundError as err:
            print(f"report checks: error: {err}", file=sys.stderr)
            return 2
        print(format_problems(Path(folder), problems))
        status = status or (1 if problems else 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
