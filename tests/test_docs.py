"""The documentation's links resolve: every relative link and `#anchor` in README.md and docs/*.md
points to a file that exists and, for a Markdown page, to a heading (GitHub's slug) or an explicit
`<a id=...>` / `<a name=...>` in it; every pointer to a page from the code (`docs/x.md#anchor`)
does too, and every repository file a page names in a code span exists. Text only: no
TensorFlow."""
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 220
# Where the code points to pages from its comments and messages. Not datasets/, cache/, runs/ or
# models/: data and outputs, not the project's text.
CODE_FOLDERS = ("data", "model", "export", "serving", "benchmarks", "deploy", "notebooks", "tests",
                ".ci")
CODE_SUFFIXES = {".py", ".yml", ".yaml", ".config", ".ipynb", ".txt", ".cfg", ".ini", ""}

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target "title") and ![alt](target): the target up to whitespace or the closing bracket.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s[^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
# A repository path in a page's code span: `model/attention.py`, `export/artifact.py:publish_version`.
# Not outputs (benchmarks/results, benchmarks/work) and not patterns (<name>, *, {a,b}).
CODE_SPAN_PATH = re.compile(r"`((?:data|model|export|serving|benchmarks|tests|deploy|notebooks|\.ci)/"
                            r"[^`\s<>*{]*)`")
OUTPUT_FOLDERS = ("benchmarks/results", "benchmarks/work")
# A dotted name of the project's code in a code span: `data.images.decode_one`, `serving.client`.
CODE_SPAN_NAME = re.compile(r"`((?:data|model|export|serving)\.[A-Za-z_][\w.]*)`")
FILE_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".txt", ".config", ".md")
# In code: README.md or docs/NAME.md, optionally with #anchor.
CODE_POINTER = re.compile(r"(?<![\w/.-])(README\.md|docs/[\w.-]+\.md)(#[\w-]+)?")


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks, with inline code spans blanked out."""
    fenced = None
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            if fenced is None:
                fenced = fence.group(1)
            elif fence.group(1) == fenced:
                fenced = None
            continue
        if fenced is None:
            yield number, INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)


def heading_text(raw: str) -> str:
    """A heading as GitHub renders its text: links reduced to their text, code spans to their
    content, HTML tags and emphasis markers dropped."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)
    text = re.sub(r"(`+)(.+?)\1", r"\2", text)
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"(\*\*|__|\*|(?<!\w)_|_(?!\w))", "", text)


def github_slug(text: str) -> str:
    """GitHub's heading anchor: lower case, every character but letters, digits, `_`, `-` and
    spaces dropped, spaces to hyphens."""
    kept = "".join(c for c in heading_text(text).strip().lower() if c.isalnum() or c in "_- ")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor of a page: each heading's slug (a repeated one gets -1, -2, ... as on GitHub)
    and the explicit <a id=...>/<a name=...> ones."""
    found, seen = set(), {}
    fenced = None
    for line in text.splitlines():
        fence = FENCE.match(line)
        if fence:
            fenced = fence.group(1) if fenced is None else (None if fence.group(1) == fenced else fenced)
            continue
        if fenced is not None:
            continue
        heading = HEADING.match(line)
        if heading:
            slug = github_slug(heading.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
        found.update(HTML_ANCHOR.findall(line))
    return found


def links(text: str):
    """(line number, target) of every link and image of a page, code excluded."""
    for number, line in prose_lines(text):
        for match in INLINE_LINK.finditer(line):
            yield number, match.group(1)
        definition = REFERENCE_DEFINITION.match(line)
        if definition:
            yield number, definition.group(1)


def problem(page: Path, target: str) -> str | None:
    """What is missing for `target`, a link on `page`, or None when it resolves."""
    if not target or SCHEME.match(target) or target.startswith("//"):
        return None  # a web address (or mailto:): not checked offline
    path_part, _, anchor = target.partition("#")
    path_part = path_part.split("?")[0]
    file = (page.parent / path_part).resolve() if path_part else page
    if REPO not in (file, *file.parents):
        return f"{path_part} is outside the repository"
    if not file.exists():
        return f"no file {file.relative_to(REPO)}"
    if anchor:
        if file.suffix != ".md" or file.is_dir():
            return f"#{anchor} in {file.relative_to(REPO)}, which is not a Markdown page"
        known = anchors(file.read_text(encoding="utf-8"))
        if anchor not in known:
            return (f"no heading or <a id> with the anchor #{anchor} in {file.relative_to(REPO)} "
                    f"(its anchors: {', '.join(sorted(known))})")
    return None


def broken_links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return [f"{page.relative_to(REPO)}:{number}: link ({target}): {missing}"
            for number, target in links(text) if (missing := problem(page, target))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves(page):
    broken = broken_links(page)
    assert not broken, "broken links:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_file_named_exists(page):
    """A page that names a module or file in a code span names one that is there (code moves)."""
    missing = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        for match in CODE_SPAN_PATH.finditer(line):
            path = match.group(1).split(":")[0].rstrip("/")
            if not path.startswith(OUTPUT_FOLDERS) and not (REPO / path).exists():
                missing.append(f"{page.relative_to(REPO)}:{number}: `{match.group(1)}`: no {path}")
    assert not missing, "files named that do not exist:\n" + "\n".join(missing)


def defined_in(module: Path, name: str) -> bool:
    """Whether `name` is defined or imported at the top level of a module's text."""
    text = module.read_text(encoding="utf-8")
    return bool(re.search(rf"^(?:def|class|async def)\s+{name}\b|^{name}\s*[:=]|^(?:from\s+\S+\s+)?"
                          rf"import\s[^\n]*\b{name}\b", text, re.MULTILINE))


def missing_name(dotted: str) -> str | None:
    """What is missing for a dotted name such as `data.images.decode_one`, or None: the longest
    prefix that is a module of the repository, then the first name after it, defined there."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        folder = REPO.joinpath(*parts[:end])
        module = folder.with_suffix(".py") if not folder.is_dir() else folder / "__init__.py"
        if module.is_file():
            if end == len(parts) or (end > 1 and defined_in(module, parts[end])):
                return None
            if end == 1:
                return f"no module {'.'.join(parts[:2])}"
            return f"no {parts[end]} in {module.relative_to(REPO)}"
    return f"no module {parts[0]}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_module_and_name_exists(page):
    """A page that names a module, function or class of the project (`data.images.decode_one`)
    names one that is there."""
    missing = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        for match in CODE_SPAN_NAME.finditer(line):
            dotted = match.group(1).rstrip(".")
            if dotted.endswith(FILE_SUFFIXES):
                continue  # a file name such as serving.kserve.io_inferenceservices.yaml
            problem_found = missing_name(dotted)
            if problem_found:
                missing.append(f"{page.relative_to(REPO)}:{number}: `{dotted}`: {problem_found}")
    assert not missing, "names that do not exist:\n" + "\n".join(missing)


def code_files():
    for folder in CODE_FOLDERS:
        root = REPO / folder
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            parts = path.relative_to(REPO).parts
            if any(part in ("work", "results", "__pycache__") for part in parts[1:]):
                continue
            if path.is_file() and not path.is_symlink() and path.suffix in CODE_SUFFIXES:
                yield path
    yield REPO / "demo.py"


def test_every_pointer_from_the_code_resolves():
    broken = []
    for path in code_files():
        if path == Path(__file__).resolve():
            continue  # its examples are not pointers
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for match in CODE_POINTER.finditer(line):
                target = match.group(1) + (match.group(2) or "")
                missing = problem(REPO / "README.md", target)
                if missing:
                    broken.append(f"{path.relative_to(REPO)}:{number}: {target}: {missing}")
    assert not broken, "pointers to the docs that do not resolve:\n" + "\n".join(broken)


def test_readme_fits_its_length():
    lines = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, more than {README_MAX_LINES}"


@pytest.mark.parametrize("heading, slug", [
    ("Fine-tuning the encoder's top", "fine-tuning-the-encoders-top"),
    ("Development server (no Docker)", "development-server-no-docker"),
    ("Precision: float32, bfloat16 and float16", "precision-float32-bfloat16-and-float16"),
    ("The `attention` preset, **fast**", "the-attention-preset-fast"),
    ("[Linked](other.md) heading", "linked-heading"),
    ("snake_case stays", "snake_case-stays"),
    ("A — dash × times", "a--dash--times"),
])
def test_github_slug(heading, slug):
    assert github_slug(heading) == slug


def test_the_checker_finds_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "code.py").write_text("")
    page = tmp_path / "docs" / "page.md"
    page.write_text("# Title\n\n## Same\n\n## Same\n\n<a id=\"explicit\"></a>\n\n"
                    "[ok](#same-1) [ok](#explicit) [ok](../code.py) [ok](https://example.com/x#y)\n"
                    "`[not a link](nowhere.md)`\n\n```\n[not a link](nowhere.md)\n```\n"
                    "[bad anchor](#same-2) [bad file](../gone.py) ![bad image](pic.png)\n")
    found = broken_links(page)
    assert len(found) == 3, found
    assert "docs/page.md:15: link (#same-2): no heading or <a id> with the anchor #same-2" in found[0]
    assert "link (../gone.py): no file gone.py" in found[1]
    assert "link (pic.png): no file docs/pic.png" in found[2]
