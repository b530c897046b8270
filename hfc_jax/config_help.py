"""`python -m hfc_jax.main --help`: the usage line, the main flags and every config field.

The config fields are those of hfc_jax/defaults.py (every config starts from it), each printed
as `FIELD = DEFAULT   [role] meaning`, grouped by section (the role, from
`defaults.ROLES`, says whether a change of it may resume a run and whether it splits
replicates). The meaning is the file's own trailing
comment, read from its source with `ast` and `tokenize` (nothing is executed):

  config.train.smooth_kernel_weight = 0.0  # > 0: + weight * sum of squared differences of
                                     # adjacent first-conv kernel values (smooth kernels).

gives `train.smooth_kernel_weight = 0.0   > 0: + weight * ... (smooth kernels).`: comment
lines that follow a field's trailing comment with nothing else on them, indented deeper than
the statement, continue it. Comment lines at the statement's own indentation just above a
section (`config.eval = ml_collections.ConfigDict()`) describe the section.
"""

import ast
import dataclasses
import io
import os
import textwrap
import sys
import tokenize

HELP_ARGS = ("--help", "-h", "-help", "--helpfull", "--helpshort")
MAIN_FLAGS = ("workdir", "config", "jax_distributed", "coordinator_address", "num_processes",
              "process_id")
USAGE = ("python -m hfc_jax.main --config=configs/<experiment>.py --workdir=<dir> "
         "[--config.FIELD=VALUE ...]")
CONFIG_DICT = "ConfigDict"  # a call to ...ConfigDict() opens a section (or is a dict field)
WIDTH = 100  # section comments are wrapped to this many columns


@dataclasses.dataclass(frozen=True)
class Field:
  """One `config.a.b = value  # comment` statement.

  Attributes:
    name: the dotted field without `config.`, e.g. "train.epochs".
    default: the value as written in the source (placeholders as "None (type)").
    meaning: its trailing comment and continuation lines, joined ("" if none).
    leading: the comment lines just above the statement, joined ("" if none).
    section: True for a top-level `config.x = ml_collections.ConfigDict()`.
  """
  name: str
  default: str
  meaning: str = ""
  leading: str = ""
  section: bool = False


def default_config_path() -> str:
  """The source file of hfc_jax/defaults.py, where every field and its default is."""
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), "defaults.py")


def wants_help(argv: list[str]) -> bool:
  """True if argv (program name first) asks for help before any `--`."""
  args = argv[1:]
  args = args[:args.index("--")] if "--" in args else args
  return any(arg in HELP_ARGS for arg in args)


def _comments(source: str) -> dict[int, tuple[int, str, bool]]:
  """Line number -> (column of '#', text after '#', whether the line holds only it)."""
  lines = source.splitlines()
  out = {}
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      row, col = token.start
      alone = not lines[row - 1][:col].strip()
      out[row] = (col, token.string.lstrip("#").strip(), alone)
  return out


def _dotted(node: ast.AST) -> str | None:
  """'a.b.c' for the expression config.a.b.c, else None."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if isinstance(node, ast.Name) and node.id == "config" and parts:
    return ".".join(reversed(parts))
  return None


def _segment(lines: list[bytes], node: ast.AST) -> str:
  """`ast.get_source_segment` on the source's lines split once (as UTF-8 bytes, the
  unit of ast's column offsets): that function splits the whole source on every call."""
  first, last = node.lineno - 1, node.end_lineno - 1
  if first == last:
    return lines[first][node.col_offset:node.end_col_offset].decode()
  return b"".join([lines[first][node.col_offset:], *lines[first + 1:last],
                   lines[last][:node.end_col_offset]]).decode()


def _default(lines: list[bytes], value: ast.expr) -> str:
  """The default as written: `placeholder(int)` as 'None (int)', `ConfigDict()` as '{}'."""
  text = " ".join(_segment(lines, value).split())
  if isinstance(value, ast.Call):
    func = _segment(lines, value.func)
    if func.endswith("placeholder") and value.args:
      return f"None ({_segment(lines, value.args[0])})"
    if func.endswith(CONFIG_DICT) and not value.args and not value.keywords:
      return "{}"
  return text


def _trailing(stmt: ast.stmt, comments: dict) -> str:
  """The statement's own comments plus the comment-only lines that continue them."""
  rows = range(stmt.lineno, stmt.end_lineno + 1)
  texts = [comments[r][1] for r in rows if r in comments and not comments[r][2]]
  row = stmt.end_lineno + 1
  while texts and row in comments and comments[row][2] and comments[row][0] > stmt.col_offset:
    texts.append(comments[row][1])
    row += 1
  return " ".join(t for t in texts if t)


def _leading(stmt: ast.stmt, comments: dict) -> str:
  """The comment-only lines at the statement's indentation right above it."""
  texts, row = [], stmt.lineno - 1
  while row in comments and comments[row][2] and comments[row][0] == stmt.col_offset:
    texts.insert(0, comments[row][1])
    row -= 1
  return " ".join(t for t in texts if t)


def _statements(tree: ast.Module) -> list[ast.stmt]:
  """The body of `get_config` if the module defines it, else the module body."""
  for node in tree.body:
    if isinstance(node, ast.FunctionDef) and node.name == "get_config":
      return node.body
  return tree.body


def parse_fields(source: str) -> list[Field]:
  """Returns every `config.<dotted> = value` assignment of a config file, in order.

  Args:
    source: the text of a config file such as hfc_jax/defaults.py.
  """
  comments = _comments(source)
  lines = source.encode().splitlines(keepends=True)
  fields = []
  for stmt in _statements(ast.parse(source)):
    if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
      continue
    name = _dotted(stmt.targets[0])
    if name is None:
      continue
    default = _default(lines, stmt.value)
    fields.append(Field(name, default, _trailing(stmt, comments), _leading(stmt, comments),
                        section=default == "{}" and "." not in name))
  return fields


def field_lines(fields: list[Field]) -> list[str]:
  """The field listing: a header per section, then `  FIELD = DEFAULT   meaning` lines."""
  lines = []
  for field in fields:
    if field.section:
      lines += ["", f"{field.name}:" + (f"   {field.meaning}" if field.meaning else "")]
      lines += textwrap.wrap(field.leading, WIDTH, initial_indent="  # ",
                             subsequent_indent="  # ")
      continue
    meaning = f"   {field.meaning}" if field.meaning else ""
    lines.append(f"  {field.name} = {field.default}{_role_tag(field.name)}{meaning}")
  return lines


def _role_tag(name: str) -> str:
  """'   [result]': the field's role in `defaults.ROLES` ('' for a field it lacks)."""
  from hfc_jax import defaults  # pylint: disable=g-import-not-at-top  (no JAX import)
  found = defaults.role(name)
  return f"   [{found}]" if found else ""


def role_lines() -> list[str]:
  """The legend of the `[role]` tags: what each role means on resume and in reports."""
  from hfc_jax import defaults  # pylint: disable=g-import-not-at-top  (no JAX import)
  lines = ["field roles (the [tag] after each default):"]
  for name, meaning in defaults.ROLE_MEANINGS.items():
    lines += textwrap.wrap(f"{name}: {meaning}.", WIDTH, initial_indent="  ",
                           subsequent_indent="      ")
  return lines


def _main_flag_names(flag_values) -> list[str]:
  """MAIN_FLAGS that flag_values defines, then the other flags of the module defining
  --workdir (hfc_jax.main), in definition order."""
  names = [name for name in MAIN_FLAGS if name in flag_values]
  if "workdir" in flag_values:
    module = flag_values.find_module_defining_flag("workdir")
    for flag in flag_values.flags_by_module_dict().get(module, ()):
      names += [] if flag.name in names else [flag.name]
  return names


def _flag_lines(flag_values) -> list[str]:
  """`  --name: help (default: value)` for each flag of `_main_flag_names`."""
  lines = []
  for name in _main_flag_names(flag_values):
    flag = flag_values[name]
    default = "" if flag.default is None else f" (default: {flag.default!r})"
    lines.append(f"  --{name}: {flag.help}{default}")
  return lines


def help_text(flag_values, description: str | None = None, config_path: str | None = None
              ) -> str:
  """The whole --help text.

  Args:
    flag_values: absl FlagValues holding MAIN_FLAGS (main.FLAGS).
    description: printed after the usage line (main's docstring), or None.
    config_path: the config file whose fields are listed; None: default_config_path().
  """
  path = config_path or default_config_path()
  lines = [f"usage: {USAGE}", ""]
  lines += [description.strip(), ""] if description else []
  lines += ["flags:", *_flag_lines(flag_values), ""]
  with open(path, encoding="utf-8") as f:
    fields = parse_fields(f.read())
  lines += role_lines() + [""]
  lines.append(f"config fields, with their defaults in {path} and their roles (set one "
               "with --config.FIELD=VALUE; other configs override some):")
  return "\n".join(lines + field_lines(fields))


def config_lines(config, name: str) -> list[str]:
  """`  FIELD = VALUE   (default: D)` for every field where `config` (loaded from the
  config file `name`, with any --config.* overrides) differs from the defaults."""
  from hfc_jax import defaults  # pylint: disable=g-import-not-at-top  (no JAX import)
  base = defaults.dotted_fields(defaults.get_config().to_dict())
  given = defaults.dotted_fields(config.to_dict())
  differ = [k for k in given if k not in base or given[k] != base[k]]
  lines = ["", f"{name} sets ({len(differ)} fields differ from the defaults):"]
  lines += [f"  {k} = {given[k]!r}" + (f"   (default: {base[k]!r})" if k in base else "")
            for k in differ]
  return lines


def print_help(flag_values, description: str | None = None, config=None,
               config_name: str = "") -> None:
  """Prints `help_text` to stdout, and with `config` the fields it sets
  (`config_lines`); a reader that stops early (`| head`) is no error."""
  text = help_text(flag_values, description)
  if config is not None:
    text += "\n" + "\n".join(config_lines(config, config_name))
  try:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
  except BrokenPipeError:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the docs' recipe
