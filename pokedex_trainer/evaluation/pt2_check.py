"""The allow-list a ``torch.export`` archive (``.pt2``) passes before ``torch.export.load`` sees it.

What ``torch.export.load`` (PyTorch 2.14) reads goes well beyond the configuration files an
archive lists: legacy ``data/weights/<program>.pt`` and ``data/constants/<program>.pt`` and
weights marked ``use_pickle`` (unpickled with ``weights_only=False``), every ``models/*.json``
program, custom and opaque objects (pickle), AOTInductor libraries, sample inputs (weights-only
with a fallback to full pickle), shape expressions (``sympy.sympify`` evaluates Python), node
targets looked up by name anywhere under ``torch``, and guard code (``exec``). Its zip reader
compares names without case and, of two entries with one name, may take either, where Python's
``zipfile`` takes the last.

So nothing the archive says about itself is trusted: the file is read once, every entry must be
one this module knows to be inert (the layout ``torch.export.save`` writes for one program
named ``model``, tensors stored raw), and PyTorch is handed an archive rebuilt here from exactly
the entries that were checked, so no second reading can see other bytes.
"""

from __future__ import annotations

import io
import json
import re
import tokenize
import zipfile
from pathlib import Path

from pokedex_trainer.errors import UserError

PROGRAM = "models/model.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
CONFIGS = {"data/weights/model_weights_config.json": ("data/weights", re.compile(r"weight_\d+")),
           "data/constants/model_constants_config.json":
               ("data/constants", re.compile(r"tensor_\d+"))}
# Read by PyTorch as short strings, never unpickled or executed.
TEXT_ENTRIES = {"archive_format", "archive_version", "byteorder", ".data/version",
                ".data/serialization_id"}
REQUIRED = {PROGRAM, SAMPLE_INPUTS, "archive_format", "archive_version", *CONFIGS}

# Node targets: ATen operators and the few Python operators torch's own verifier allows.
# aten::from_file maps a file given as a string: not an operator a classifier needs.
_TARGET = re.compile(r"torch\.ops\.aten\.(?!from_file\b)\w+\.\w+|"
                     r"_operator\.(getitem|add|sub|mul|truediv|floordiv|mod|pow|neg|pos|abs|"
                     r"eq|ne|lt|le|gt|ge|and_|or_|not_)|"
                     r"torch\.(sym_int|sym_float|sym_ite|sym_max|sym_min|sym_not|sym_sum|"
                     r"_sym_sqrt)|math\.(trunc|ceil|floor)")
# Names a shape expression (sympy's srepr, as torch writes it) may use.
_SYMPY_NAMES = {
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan",
    "GreaterThan", "Equality", "Unequality", "And", "Or", "Not", "true", "false", "True",
    "False", "BooleanTrue", "BooleanFalse", "oo", "zoo", "nan", "Infinity", "NegativeInfinity",
    "NegativeOne", "One", "Zero", "Half", "IntInfinity", "NegativeIntInfinity", "floor",
    "ceiling", "sqrt", "positive", "negative", "nonnegative", "nonpositive", "integer", "real",
    "finite", "infinite", "zero", "nonzero", "even", "odd", "commutative", "precision",
    # torch.utils._sympy.functions, as the deserializer names them
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
    "RoundDecimal", "ToFloat", "Identity", "OpaqueUnaryFn_log2", "BitwiseFn_bitwise_and",
    "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor", "Piecewise", "ITE",
}
# Powers and shifts of literals can make sympy compute numbers with billions of digits (it
# evaluates them as it parses): a classifier's shapes never need them.
_SYMPY_NAMES -= {"Pow", "PowByNatural", "FloatPow", "LShift", "RShift"}
_SYMBOL = re.compile(r"[a-z]{1,4}\d{1,9}")
_OPERATORS = {"(", ")", ",", "=", "+", "-", "*", "/", "%", "<", ">", "<=", ">=", "==", "!=",
              "//"}
# Names that torch turns into Python source when it rebuilds the module (parameters, buffers,
# constants, graph nodes, forward's arguments, module paths): `getattr(self, "<name>")` is
# written unescaped, so a name must be a plain dotted identifier.
_NAME_KEYS = {"name", "parameter_name", "buffer_name", "tensor_constant_name",
              "custom_obj_name", "user_input_name", "user_output_name", "forward_arg_names",
              "fqn", "target_name"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
# Free text that never becomes code: a stack trace (comments), pytree specs (JSON), shapes
# (checked as expressions). Any other string may not hold quotes, backslashes or line breaks.
_FREE_TEXT = {"stack_trace", "in_spec", "out_spec", "expr_str"}
_PLAIN = re.compile(r"[^\"'\\\n\r\0]*")


def checked_pt2_bytes(path: Path) -> bytes:
    """The archive at ``path``, read once and checked, as the bytes to hand to
    ``torch.export.load(io.BytesIO(...))``; UserError if any part of it could run code."""
    path = Path(path)
    try:
        from pokedex_trainer.user_io.regular_files import read_regular

        data = read_regular(path)
    except OSError as exc:
        raise UserError(f"could not read '{path}': {exc.strerror or exc}") from None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            root, entries = _entries(archive, path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError,
            ValueError, OSError):
        raise UserError(f"'{path}' is not a torch.export archive (not a readable zip file)") \
            from None
    _check_layout(entries, path)
    for config, (folder, pattern) in CONFIGS.items():
        _check_config(entries, config, folder, pattern, path)
    _check_program(entries[PROGRAM], path)
    _weights_only(entries[SAMPLE_INPUTS], SAMPLE_INPUTS, path)
    return _rebuild(root, entries)


def refuse(path: Path, why: str) -> None:
    raise UserError(f"refused to open '{path}': {why}; loading it could run code")


def _entries(archive: zipfile.ZipFile, path: Path) -> tuple[str, dict[str, bytes]]:
    infos = archive.infolist()
    if not infos:
        refuse(path, "an empty archive")
    root = infos[0].filename.split("/", 1)[0]
    entries: dict[str, bytes] = {}
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        if name.lower() in seen:  # PyTorch's reader ignores case and may take either copy
            refuse(path, f"it holds two entries named '{name}'")
        seen.add(name.lower())
        if not name.startswith(root + "/") or info.is_dir():
            refuse(path, f"it holds '{name}', a folder entry or one outside its archive "
                         "folder")
        entries[name[len(root) + 1:]] = archive.read(info)
    return root, entries


def _check_layout(entries: dict[str, bytes], path: Path) -> None:
    raw = {folder: config for config, (folder, _) in CONFIGS.items()}
    for name in entries:
        folder, _, leaf = name.rpartition("/")
        known = name in REQUIRED or name in TEXT_ENTRIES or \
            (folder == "extra" and leaf) or \
            (folder in raw and CONFIGS[raw[folder]][1].fullmatch(leaf))
        if not known:
            refuse(path, f"it holds '{name}', which is not part of a plain torch.export "
                         "program (one program, tensors stored raw)")
    missing = sorted(REQUIRED - set(entries))
    if missing:
        refuse(path, f"it lacks {', '.join(missing)}")


def _check_config(entries, config_name: str, folder: str, pattern, path: Path) -> None:
    try:
        config = json.loads(entries[config_name])["config"]
        items = list(config.items())
    except (ValueError, KeyError, TypeError, AttributeError):
        refuse(path, f"{config_name} is not a readable configuration")
    for name, meta in items:
        if not isinstance(name, str) or not _NAME.fullmatch(name):  # becomes source code too
            refuse(path, f"'{str(name)[:80]}' in {config_name} is not a plain name")
        leaf = meta.get("path_name") if isinstance(meta, dict) else None
        if not isinstance(leaf, str) or not pattern.fullmatch(leaf):
            refuse(path, f"{name} is stored as '{leaf}', not as raw tensor data (pickled or "
                         "custom objects are not read)")
        if meta.get("use_pickle", False) is not False:
            refuse(path, f"{name} is pickled (PyTorch unpickles it without restriction)")
        if f"{folder}/{leaf}" not in entries:
            refuse(path, f"{name}: {folder}/{leaf} is missing")


def _check_program(data: bytes, path: Path) -> None:
    try:
        program = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        refuse(path, f"{PROGRAM} is not valid JSON")
    if not isinstance(program, dict):
        refuse(path, f"{PROGRAM} is not a program")
    if program.get("guards_code"):  # exec'd as Python by .module()
        refuse(path, "it carries guard code")
    _walk(program, "", path)


def _walk(value, key: str, path: Path) -> None:
    if isinstance(value, dict):
        for inner_key, inner in value.items():
            _walk(inner_key, "", path)
            _walk(inner, inner_key, path)
    elif isinstance(value, list):
        for inner in value:
            _walk(inner, key, path)
    elif isinstance(value, str):
        if "\r" in value or "\0" in value:  # would end a line of generated source code
            refuse(path, f"{PROGRAM} holds a control character")
        if key in _NAME_KEYS and value and not _NAME.fullmatch(value):
            refuse(path, f"'{value[:80]}' is not a plain name ({key})")
        if key not in _FREE_TEXT and not _PLAIN.fullmatch(value):
            refuse(path, f"'{value[:80]}' ({key or 'a key'}) holds quotes, backslashes or line "
                         "breaks")
        if key in ("target", "as_operator") and not _TARGET.fullmatch(value):
            refuse(path, f"its graph calls '{value[:80]}', which is not an ATen operator")
        if key == "expr_str" and not _plain_expression(value):
            refuse(path, f"its shape expression '{value[:80]}' is not plain arithmetic")


def _plain_expression(text: str) -> bool:
    """Whether ``sympy.sympify(text)`` can only build an expression: sympy names, symbol names,
    numbers and arithmetic; no attribute, subscript, string other than a symbol's name."""
    if len(text) > 20000:
        return False
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return False
    for token in tokens:
        kind, string = token.type, token.string
        if kind in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER):
            continue
        fine = (kind == tokenize.NAME and (string in _SYMPY_NAMES or _SYMBOL.fullmatch(string))) \
            or (kind == tokenize.NUMBER and len(string) <= 18) \
            or (kind == tokenize.STRING and re.fullmatch(r"'[a-z]{1,4}\d{1,9}'", string)) \
            or (kind == tokenize.OP and string in _OPERATORS)
        if not fine:
            return False
    return True


def _weights_only(data: bytes, name: str, path: Path) -> None:
    import torch

    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure of the weights-only unpickler: refuse
        refuse(path, f"{name} holds more than tensors ({type(exc).__name__})")


def _rebuild(root: str, entries: dict[str, bytes]) -> bytes:
    """A fresh zip of exactly the checked entries: one name each, nothing else to find."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(f"{root}/{name}", data)
    return buffer.getvalue()
