"""The README and docs/: every command they show that runs one of the project's scripts is
parsed by that script's own argparse parser (nothing runs: parse only, a few seconds), the
README stays short, and every relative link points to a file (and heading) that exists."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT

DOCS = ROOT / "docs"
DOC_FILES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 250

SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "powershell", "ps1", "pwsh", "bat",
                   "cmd"}
CONTINUATION = re.compile(r"(?:\s\\|\s`)$")  # bash `\`, PowerShell backtick
LAUNCHERS = {"python", "python3", "py", "torchrun", "srun", "bash", "sh"}


def _launcher(word: str) -> str:
    """A launcher's name, also when a virtual environment's path leads it (.venv/bin/python)."""
    return re.split(r"[\\/]", word)[-1]


@dataclass(frozen=True)
class Command:
    file: Path
    line: int
    text: str  # as shown (continuations joined)
    variants: tuple[str, ...]  # shell text with loop values, arrays and alternatives expanded

    def where(self) -> str:
        return f"{self.file.relative_to(ROOT).as_posix()}:{self.line}"


# --- finding the commands ----------------------------------------------------------------

def _fences(lines: list[str]):
    """(start index, language, body lines [(index, text)]) of every fenced code block."""
    i = 0
    while i < len(lines):
        match = re.match(r"\s*(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not match:
            i += 1
            continue
        fence, language, body = match.group(1), match.group(2).lower(), []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append((j, lines[j]))
            j += 1
        yield i, language, body
        i = j + 1


def _logical_lines(body: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join bash `\\` and PowerShell backtick continuations: (first line index, text)."""
    out, pending, start = [], "", None
    for index, text in body:
        if start is None:
            start = index
        if CONTINUATION.search(text):
            pending += text[:-1] + " "
            continue
        out.append((start, pending + text))
        pending, start = "", None
    if pending:
        out.append((start, pending))
    return out


def _block_context(lines: list[tuple[int, str]]):
    """Loop variables (name -> values) and bash arrays (name -> alternatives) of a block, and
    the lines left once the array assignments are taken out."""
    loops: dict[str, list[str]] = {}
    arrays: dict[str, list[str]] = {}
    rest, i = [], 0
    while i < len(lines):
        index, text = lines[i]
        bash_for = re.match(r"\s*for\s+(\w+)\s+in\s+(.+?)\s*;\s*do\b", text)
        ps_foreach = re.match(r"\s*foreach\s*\(\s*\$(\w+)\s+in\s+(.+?)\)\s*\{", text,
                              re.IGNORECASE)
        array = re.match(r"\s*(\w+)=\((.*)$", text)
        if bash_for:
            loops[bash_for.group(1)] = shlex.split(bash_for.group(2))
        elif ps_foreach:
            loops[ps_foreach.group(1)] = [v.strip().strip("'\"")
                                          for v in ps_foreach.group(2).split(",")]
        elif array:
            content = array.group(2)
            while not content.rstrip().endswith(")") and i + 1 < len(lines):
                i += 1
                content += " " + lines[i][1].strip()
            arrays.setdefault(array.group(1), []).append(content.rstrip()[:-1])
            i += 1
            continue
        rest.append((index, text))
        i += 1
    return loops, arrays, rest


def _expand(text: str, loops: dict, arrays: dict) -> list[str]:
    """Every concrete form of a shown command: each bash array alternative, each loop value,
    each `a|b` alternative, with and without an `[--optional part]`; any other shell variable
    becomes a number (argparse takes it for a value of any type)."""
    forms = [text]

    def branch(pattern, choices_of):
        nonlocal forms
        forms = [result for form in forms for result in branch_one(form, pattern, choices_of)]

    def branch_one(form, pattern, choices_of):
        match = re.search(pattern, form)
        if not match:
            return [form]
        return [result for choice in choices_of(match)
                for result in branch_one(form[:match.start()] + choice + form[match.end():],
                                         pattern, choices_of)]

    for name, alternatives in arrays.items():
        branch(r'"?\$\{' + name + r'\[@\]\}"?', lambda m, a=alternatives: a)
    for name, values in loops.items():
        branch(r"\$\{?" + name + r"\b\}?", lambda m, v=values: v)
    branch(r"(?<![\w/.$-])([\w.-]+(?:\|[\w.-]+)+)(?![\w/.-])",
           lambda m: m.group(1).split("|"))
    branch(r"\[(--[^\]\[]*)\]", lambda m: [m.group(1), ""])
    unknown = r"\$\{[^}]*\}|\$\([^)]*\)|\$env:\w+|\$[A-Za-z_]\w*|\$_"
    return [re.sub(unknown, "1", form) for form in forms]


def _looks_like_command(text: str) -> bool:
    words = re.sub(r"^\s*(?:[A-Za-z_]\w*=\S*\s+)*", "", text).split()
    return bool(words) and _launcher(words[0]) in LAUNCHERS


def _inline_spans(lines: list[str]):
    """(line index, text) of the inline code spans outside fenced blocks (a span may wrap)."""
    kept = list(lines)
    for start, _language, body in _fences(lines):
        for index in [start, *(i for i, _ in body), start + len(body) + 1]:
            if index < len(kept):
                kept[index] = ""
    text = "\n".join(kept)
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        if "\n\n" not in match.group(1):
            yield text.count("\n", 0, match.start()), " ".join(match.group(1).split())


def commands_in(path: Path) -> list[Command]:
    """Every command of ``path`` that starts with one of LAUNCHERS (a script of this project
    or not: the check tells them apart), in code blocks and in inline code."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    for _start, language, body in _fences(lines):
        if language not in SHELL_LANGUAGES:
            continue
        loops, arrays, rest = _block_context(_logical_lines(body))
        for index, text in rest:
            if _looks_like_command(text) or any(
                    _looks_like_command(part) for part in re.split(r";|&&|\|\||\{", text)):
                found.append(Command(path, index + 1, text.strip(),
                                     tuple(_expand(text, loops, arrays))))
    for index, text in _inline_spans(lines):
        if _looks_like_command(text) and len(text.split()) > 1:  # not a bare `torchrun`
            found.append(Command(path, index + 1, text, tuple(_expand(text, {}, {}))))
    return sorted(found, key=lambda c: c.line)


# --- splitting a command line ------------------------------------------------------------

def simple_commands(shell_text: str) -> list[list[str]]:
    """The simple commands of a shell line, split at `;`, `&&`, `||`, `|`, `&`, `{`, `}`,
    without leading `VAR=value` assignments; comments, quotes and the placeholder `...` are
    removed (backslashes stay: Windows paths)."""
    lexer = shlex.shlex(shell_text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.escape = ""
    tokens = [token for token in lexer if token != "..."]
    commands, current = [], []
    for token in tokens + [";"]:
        if token in {";", "&&", "||", "|", "&", "{", "}", ";;"} or set(token) <= set(";&|"):
            while current and re.match(r"[A-Za-z_]\w*=", current[0]):
                current.pop(0)
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    return commands


def _torchrun_split(argv: list[str]) -> tuple[str, list[str]]:
    """torchrun's own options checked by torchrun's parser; the script and its arguments."""
    try:
        from torch.distributed.run import get_args_parser
    except ImportError:  # no PyTorch here: the script is the first .py argument
        index = next(i for i, token in enumerate(argv) if token.endswith(".py"))
        return argv[index], argv[index + 1:]
    args = get_args_parser().parse_args(argv)
    return args.training_script, list(args.training_script_args)


# --- the scripts' own parsers ------------------------------------------------------------

class _Parsed(BaseException):
    """Raised by the patched ArgumentParser.parse_args once the real parse succeeded, so a
    benchmark's main(argv) stops right there."""

    def __init__(self, namespace):
        super().__init__()
        self.namespace = namespace


def _benchmark_module(script: Path):
    folder = str(script.parent)
    sys.path.insert(0, folder)  # imagenet_transfer imports registry_photos beside it
    try:
        name = f"_docs_benchmark_{script.stem}"
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, script)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        return sys.modules[name]
    finally:
        sys.path.remove(folder)


def _parse_benchmark(script: Path, argv: list[str]):
    """The benchmark's own parser on ``argv``, and nothing after it: its ``parse_args(argv)``
    or ``main(argv)`` runs until ArgumentParser.parse_args returns (the checks that look at
    the disk, a folder that must exist, come after and are left out)."""
    module = _benchmark_module(script)
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    argparse.ArgumentParser.parse_args = parse_and_stop
    try:
        (getattr(module, "parse_args", None) or module.main)(argv)
    except _Parsed as parsed:
        return parsed.namespace
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{script.name}: returned without parsing its arguments")


def _parse_train(argv: list[str]):
    from pokedex_trainer.cli.parsers import parse_train_command

    return parse_train_command(argv)


def _parse_with(builder_name: str):
    def parse(argv):
        from pokedex_trainer.cli import parsers as cli

        return getattr(cli, builder_name)().parse_args(argv)
    return parse


ROOT_SCRIPTS = {
    "train_professional_models.py": _parse_train,
    "prepare_dataset.py": _parse_with("build_prepare_parser"),
    "evaluate.py": _parse_with("build_evaluate_parser"),
    "export.py": _parse_with("build_export_parser"),
}


def _parse_script(script: str, argv: list[str]):
    name = script.replace("\\", "/").removeprefix("./")
    if name in ROOT_SCRIPTS:
        return ROOT_SCRIPTS[name](argv)
    path = ROOT / name
    if name.startswith("benchmarks/") and name.endswith(".py") and path.is_file():
        namespace = _parse_benchmark(path, argv)
        if path.name == "recipe.py":  # each --recipe row's options go to the trainer
            for row in namespace.recipe:
                _parse_train(shlex.split(row.partition("=")[2]))
        return namespace
    raise AssertionError(f"'{script}' is not a script of this project")


def check_simple_command(argv: list[str]) -> str | None:
    """None when ``argv`` is not a command of this project's scripts or parses; else why not.
    Raises SystemExit/exceptions of the parser to the caller."""
    words = list(argv)
    if words and words[0] == "srun":
        words = words[1:]
        while words and words[0].startswith("-"):
            words = words[1:]
    if not words:
        return None
    launcher, rest = _launcher(words[0]), words[1:]
    if launcher in {"bash", "sh"}:
        if rest and rest[0].endswith(".sh") and not (ROOT / rest[0]).is_file():
            return f"'{rest[0]}' does not exist"
        return None
    if launcher == "torchrun":
        script, args = _torchrun_split(rest)
    elif launcher in {"python", "python3", "py"}:
        if not rest or rest[0] in {"-", "-c"} or rest[0].startswith("-3"):
            return None
        if rest[0] == "-m":
            module = rest[1] if len(rest) > 1 else ""
            if module == "torch.distributed.run":
                script, args = _torchrun_split(rest[2:])
            elif module.split(".")[0] == "pokedex_trainer":
                return f"no parser known for 'python -m {module}': add it to tests/test_docs.py"
            else:
                return None  # pip, pytest, venv...
        elif rest[0].endswith(".py"):
            script, args = rest[0], rest[1:]
        else:
            return None
    else:
        return None
    _parse_script(script, args)
    return None


def check(command: Command) -> list[str]:
    """The failures of one shown command: 'file:line: command' and the parser's message."""
    failures = []
    for variant in command.variants:
        for argv in simple_commands(variant):
            stderr, stdout = io.StringIO(), io.StringIO()
            try:
                with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
                    problem = check_simple_command(argv)
            except SystemExit as exc:
                message = stderr.getvalue().strip().splitlines()  # usage, then the error
                problem = None if exc.code in (0, None) else (
                    message[-1] if message else f"exit code {exc.code}")
            except Exception as exc:  # noqa: BLE001  (reported with the command)
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                failures.append(f"{command.where()}: {shlex.join(argv)}\n    {problem}")
    return failures


# --- the tests ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_shown_command_parses(path):
    """Each command shown in the page that runs one of the project's scripts is accepted by
    that script's own parser (flags, choices, values)."""
    failures = [failure for command in commands_in(path) for failure in check(command)]
    assert not failures, "commands the scripts' parsers refuse:\n" + "\n".join(failures)


def test_the_pages_show_every_script():
    """The extraction finds commands of every script (a parser that sees nothing proves
    nothing): the four scripts, the benchmarks, torchrun, loops and a bash array."""
    commands = [c for path in DOC_FILES for c in commands_in(path)]
    shown = " ".join(variant for c in commands for variant in c.variants)
    for script in ("prepare_dataset.py", "train_professional_models.py", "evaluate.py",
                   "export.py", "benchmarks/recipe.py", "benchmarks/input_pipeline.py",
                   "benchmarks/imagenet_transfer.py", "benchmarks/registry_photos.py"):
        assert f"python {script}" in shown, script
    assert "torchrun " in shown
    loops = [c for c in commands if "$lr" in c.text]
    assert len(loops) == 2 and all(len(c.variants) == 4 for c in loops)
    slurm = [c for c in commands if "${what[@]}" in c.text]
    assert len(slurm) == 1 and len(slurm[0].variants) == 2
    assert len(commands) >= 40


def test_a_wrong_command_fails_with_file_line_and_message(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Intro.\n\n```bash\nfor lr in 0.1 0.2; do\n"
                    "  python train_professional_models.py --learning_rate \"$lr\" \\\n"
                    "    --no_such_flag 1\ndone\n```\n\nInline: `python export.py "
                    "--run_dir r --formats onnx` and `python evaluate.py --sort`.\n",
                    encoding="utf-8")
    commands = commands_in(page)
    assert [(c.line, len(c.variants)) for c in commands] == [(5, 2), (10, 1), (10, 1)]
    assert commands[0].variants[1].startswith(
        "  python train_professional_models.py --learning_rate \"0.2\"")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Command, "where", lambda self: f"page.md:{self.line}")
        failures = [f for c in commands for f in check(c)]
    assert len(failures) == 3
    assert failures[0].startswith("page.md:5: python train_professional_models.py")
    assert "unrecognized arguments: --no_such_flag 1" in failures[0]
    assert failures[2].startswith("page.md:10: python evaluate.py --sort")
    assert "ambiguous option: --sort" in failures[2] or "--sort_by" in failures[2]


@pytest.mark.parametrize("text, expected", [
    ("KERAS_BACKEND=jax python train_professional_models.py --epochs 1",
     [["python", "train_professional_models.py", "--epochs", "1"]]),
    ('$env:KERAS_BACKEND = "jax"; python evaluate.py --experiments model/ultra',
     [["$env:KERAS_BACKEND", "=", "jax"], ["python", "evaluate.py", "--experiments",
                                           "model/ultra"]]),
    ("python -m pip install -r requirements.txt && python export.py --run_dir <run>  # note",
     [["python", "-m", "pip", "install", "-r", "requirements.txt"],
      ["python", "export.py", "--run_dir", "<run>"]]),
    ("python train_professional_models.py ... --kfold 5",
     [["python", "train_professional_models.py", "--kfold", "5"]]),
    (r"torchrun --nnodes 2 train_professional_models.py --data_path \\server\share\data",
     [["torchrun", "--nnodes", "2", "train_professional_models.py", "--data_path",
       r"\\server\share\data"]]),
])
def test_simple_commands(text, expected):
    assert simple_commands(text) == expected


def test_expansions():
    assert _expand("python b.py --loader on|off [--augment on]", {}, {}) == [
        "python b.py --loader on --augment on", "python b.py --loader on ",
        "python b.py --loader off --augment on", "python b.py --loader off "]
    assert _expand('1..2 | ForEach-Object { python t.py --seed $_ --run "$RUN" }', {}, {}) == [
        '1..2 | ForEach-Object { python t.py --seed 1 --run "1" }']
    lines = [(0, "foreach ($lr in 0.1, 0.2) {"), (1, "  python t.py `"), (2, "  --lr $lr"),
             (3, "}")]
    loops, arrays, rest = _block_context(_logical_lines(lines))
    assert loops == {"lr": ["0.1", "0.2"]} and arrays == {}
    assert rest[1] == (1, "  python t.py    --lr $lr")
    assert _expand(rest[1][1], loops, arrays) == ["  python t.py    --lr 0.1",
                                                  "  python t.py    --lr 0.2"]


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


# --- links -------------------------------------------------------------------------------

def _prose(text: str) -> str:
    """The text with fenced blocks and inline code blanked (line numbers kept)."""
    lines = text.splitlines()
    for start, _language, body in _fences(lines):
        for index in [start, *(i for i, _ in body), start + len(body) + 1]:
            if index < len(lines):
                lines[index] = ""
    return re.sub(r"`[^`]*`", "", "\n".join(lines))


def _links(path: Path) -> list[tuple[int, str]]:
    prose = _prose(path.read_text(encoding="utf-8"))
    return [(prose.count("\n", 0, m.start()) + 1, m.group(1))
            for m in re.finditer(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)]


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for start, _language, body in _fences(lines):
        for index in [start, *(i for i, _ in body), start + len(body) + 1]:
            if index < len(lines):
                lines[index] = ""
    anchors, seen = set(), {}
    for line in lines:
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_existing_files(path):
    broken = []
    for line, target in _links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:...
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT).as_posix()}:{line}: ({target})"
        if not linked.exists():
            broken.append(f"{where}: no such file")
        elif ROOT not in linked.parents and linked != ROOT:
            broken.append(f"{where}: outside the repository")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{where}: no heading with that anchor")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_links_every_docs_page_and_each_page_has_a_title_and_contents():
    readme = ROOT / "README.md"
    linked = {(readme.parent / target.partition("#")[0]).resolve()
              for _, target in _links(readme) if target.startswith("docs/")}
    pages = set(p.resolve() for p in DOCS.glob("*.md"))
    assert pages, "docs/ holds no page"
    assert linked <= pages | {DOCS.resolve()}, "README links a page docs/ does not have"
    assert pages <= linked, f"pages the README does not link: {sorted(pages - linked)}"
    for page in pages:
        lines = page.read_text(encoding="utf-8").splitlines()
        assert re.match(r"# \S", lines[0]), f"{page.name}: first line is not a title"
        assert any(line.startswith("What's here") for line in lines[1:5]), page.name
