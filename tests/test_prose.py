"""The book's prose types no build-dependent number: every such number is glued from the build.

A digit in a chapter's Markdown (``book/*.py`` markdown cells, ``book/intro.md``) is a claim about
this build unless it sits in one of the places below, where digits name things rather than results:

- code (fenced or indented blocks, inline code spans: `2^k`, `0.8`), glue roles
  ({glue:text}`ch2_f1:.2f`) and other roles, link targets, headings, directive options
  (``:class: dropdown``);
- chapter and exercise references ("chapter 3", "chapters 1 to 6", "[3. Grad-CAM](...)", "Exercise 2");
- names with digits in them (F1, F2, EfficientNet-Lite0, EPSG:4326, WGS84, 16-bit, 2D, Python 3.11,
  jupyter-book 1.x).

Anything else ("test AUPRC 0.979", "about 14 minutes", "six epochs at 224 px" written as digits) fails:
glue it ({glue:text}`ch2_auprc:.3f`), or put a parameter value or an illustration in a code span
(`epochs = 6`, `1/√n`). Dollar math is not used at all: it makes every page load MathJax from a CDN,
and the book must work offline (test_no_dollar_math).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"

FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=fence)\s*$", re.S | re.M)
INDENTED = re.compile(r"(?:\A|\n[ \t]*\n)(?P<body>(?: {4,}\S.*(?:\n|\Z))+)")  # an indented code block
STRIP = [
    re.compile(r"\$\$.*?\$\$", re.S),  # display math
    re.compile(r"(?<!\\)\$[^$\n]+\$"),  # inline math
    re.compile(r"\{[\w:.-]+\}`[^`]*`"),  # roles: {glue:text}`ch2_f1:.2f`, {doc}`...`
    re.compile(r"(`+)[^`]*?\1"),  # inline code spans
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"<https?://[^>]*>"),  # autolinks
    re.compile(r"https?://\S+"),
    re.compile(r"^\s*#.*$", re.M),  # headings
    re.compile(r"^\s*:[\w-]+:.*$", re.M),  # directive options
    re.compile(r"^\s*\|?\s*-{3,}.*$", re.M),  # table rules
]
ALLOWED = [
    re.compile(r"\bchapters?\s+\d+(?:\s*(?:,|and|to|or|-|–)\s*\d+)*", re.I),
    re.compile(r"\b(?:exercise|step|part)\s+\d+", re.I),
    re.compile(r"(?:^|\[|\|)\s*\*{0,2}\d+\.\s+(?=[A-Z])", re.M),  # "[3. Grad-CAM]", "| 1. Data |"
    re.compile(r"\b[A-Za-z][\w-]*?\d[\w.]*"),  # F1, lite0, WGS84, ResNet-18, x86_64
    re.compile(r"\bEPSG:\d+"),
    re.compile(r"\b\d+-bit\b"),
    re.compile(r"\b\d+D\b"),
    re.compile(r"\b(?:Python|python|Jupyter Book|jupyter-book|myst-nb|version)\s+\d+(?:\.\d+|\.x)*"),
    re.compile(r"\b\d+\.x\b"),
]
DIGIT = re.compile(r"\d")


def prose(markdown: str) -> str:
    """``markdown`` without code, math, roles, links, headings and directive options."""

    def keep_directives(match: re.Match) -> str:  # an admonition's text is prose; a code block is not
        return match.group("body") if match.group("info").strip().startswith("{") else ""

    previous = None
    while previous != markdown:  # nested fences (````{admonition} holding ```bash)
        previous, markdown = markdown, FENCE.sub(keep_directives, markdown)
    markdown = INDENTED.sub("\n\n", markdown)
    for pattern in STRIP:
        markdown = pattern.sub(" ", markdown)
    return markdown


def digit_claims(markdown: str) -> list[str]:
    """The lines of ``markdown`` that still hold a digit once code, math and allowed names are gone."""
    claims = []
    for line in prose(markdown).splitlines():
        rest = line
        for pattern in ALLOWED:
            rest = pattern.sub(" ", rest)
        if DIGIT.search(rest):
            claims.append(line.strip())
    return claims


def markdown_cells(path: Path) -> list[str]:
    """The Markdown of a chapter: its jupytext markdown cells, or the whole file for ``.md``."""
    if path.suffix == ".md":
        return [path.read_text()]
    import jupytext

    return [cell.source for cell in jupytext.read(path).cells if cell.cell_type == "markdown"]


def book_pages() -> list[Path]:
    return [BOOK / "intro.md", *sorted(BOOK.glob("[0-9][0-9]_*.py"))]


# --------------------------------------------------------------------------------------------------
# The rule bites
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "claim",
    [
        "The quick profile reaches test AUPRC 0.979 on the held-out town.",
        "Training takes about 14 minutes on two cores.",
        "8 of 9 schools are found.",
        "a few dozen chips (409 here)",
        "the SHAP gap moves from 0.254 to 0.228",
        "the whole book takes 22 min, 760–900 s of it training",
        "```{admonition} Solution\n:class: dropdown\nThe scan then finds 7 schools.\n```",
        "- **Time to run**: about 3 minutes",
        "- a list item\n  continued over 2 lines",
        "a threshold of 0.61",
    ],
)
def test_a_typed_number_is_caught(claim):
    assert digit_claims(claim), claim


@pytest.mark.parametrize(
    "allowed",
    [
        "Test AUPRC is {glue:text}`ch2_auprc:.3f` and F1 {glue:text}`ch2_f1:.2f`.",
        "Run `schoolvision train --epochs 6 --image-size 224` first.",
        "```bash\npapermill book/02_training.ipynb out.ipynb -p epochs 1\n```",
        "```{admonition} Solution\n:class: dropdown\n\nRerun:\n\n    papermill a.ipynb b.ipynb -p k 50\n\nThen.\n```",
        "See [3. Grad-CAM](03_gradcam.ipynb) and chapters 1 to 6; chapter 2 trains.",
        "EfficientNet-Lite0 on EPSG:4326 tiles, WGS84 points, 16-bit imagery, F1 and F2, a 2D map.",
        "the gap shrinks like `1/√n` with `2^k` windows",
        "# 2. Training a school classifier",
        "| 1. Data | generates the demo towns |",
        "**Exercise 2.** Rerun with one more epoch.",
        "Python 3.11 and jupyter-book 1.x",
        "the scan is [evaluated](06_mapping.ipynb#evaluation-2)",
    ],
)
def test_names_code_math_and_glue_are_allowed(allowed):
    assert digit_claims(allowed) == []


# --------------------------------------------------------------------------------------------------
# The book obeys it
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", book_pages(), ids=lambda p: p.name)
def test_no_typed_number_in_the_book(page):
    claims = [claim for cell in markdown_cells(page) for claim in digit_claims(cell)]
    assert not claims, (
        f"{page.name}: typed numbers in prose (glue them, or use a code span or math):\n  " + "\n  ".join(claims)
    )


def test_readme_points_to_the_build_for_times():
    """The README types no run time: it points to the results page, which glues the execution record."""
    text = (ROOT / "README.md").read_text()
    assert not re.search(r"\b\d+\s*(?:min|minutes|s|seconds)\b", prose(text)), "README types a run time"


@pytest.mark.parametrize("page", book_pages(), ids=lambda p: p.name)
def test_code_in_prose_fits_the_page(page):
    """Commands in the prose are wrapped at 88 columns, the width book.css fits on a 1280 px screen."""
    long = []
    for cell in markdown_cells(page):
        for match in FENCE.finditer(cell):
            body = match.group("body")
            if match.group("info").strip().startswith("{"):  # a directive: check the code blocks inside it
                long += [line for inner in FENCE.finditer(body) for line in inner.group("body").splitlines()
                         if len(line) > 88]
            else:
                long += [line for line in body.splitlines() if len(line) > 88]
        for match in INDENTED.finditer(cell):
            long += [line[4:] for line in match.group("body").splitlines() if len(line) > 88 + 4]
    assert not long, f"{page.name}: code lines over 88 columns (clipped in the HTML):\n  " + "\n  ".join(long)


@pytest.mark.parametrize("page", book_pages(), ids=lambda p: p.name)
def test_no_dollar_math(page):
    """Math makes Sphinx load MathJax from a CDN on every page: offline, it fails (browser_check) and shows TeX."""
    cells = [re.sub(r"(`+)[^`]*?\1", " ", FENCE.sub("", cell)) for cell in markdown_cells(page)]
    math = [m.group(0) for cell in cells for m in re.finditer(r"(?<![\\$])\$[^$\n]+\$", cell)]
    assert not math, f"{page.name}: dollar math {math[:3]}: write it in a code span (`1/√n`) or in words"
