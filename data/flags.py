"""Settings dataclasses whose fields carry their own help, choices and flag name, so a command line
made from them (`add_flags`) and the code reading them share one definition per setting:

    epochs: int = setting(20, "epochs at most")
    lr_schedule: str = setting("constant", "how the rate decays", choices=("constant", "cosine"))

Keys a setting may carry beside its help: `choices` (checked by argparse and by check_choices),
`flag` (the flag's name when it is not the field's), `const` (the bare flag's value: the flag's
value is then optional), `metavar`. Fields made without `setting` (e.g. sizes the data decides)
are not settings: they get no flag.
"""
import argparse
import dataclasses
import types
import typing

ARGPARSE_KEYS = ("help", "choices", "const", "metavar")


def setting(default, help: str, **metadata):
    """A dataclass field with a default and the metadata above."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def settings_fields(cls) -> list[dataclasses.Field]:
    """The fields of dataclass `cls` made with `setting`."""
    return [field for field in dataclasses.fields(cls) if "help" in field.metadata]


def check_choices(settings) -> None:
    """ValueError naming the field, the value and the choices, for the first field off its list."""
    for field in settings_fields(type(settings)):
        value, choices = getattr(settings, field.name), field.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"{type(settings).__name__}.{field.name} must be one of "
                             f"{list(choices)}, got {value!r}")


def add_flags(parser, cls, *, prefix: str = "", separator: str = "-", keep_defaults=False,
              shown: dict | None = None) -> None:
    """One flag per setting of `cls`, parsed into `prefix + field name`: `--<prefix><name>` with
    `_` written as `separator`, unless the field names its flag. bool settings get
    --name/--no-name; `X | None` settings also take "none".

    keep_defaults=True: a flag not given takes its field's default, which the help shows.
    Otherwise it is left out of the parsed namespace, so the caller knows which settings were
    chosen (the rest keep, say, a preset's values); the help then shows `shown[dest]`, if any."""
    hints = typing.get_type_hints(cls)
    for field in settings_fields(cls):
        dest = prefix + field.name
        flag = field.metadata.get("flag", dest).replace("_", separator)
        default = field.default if keep_defaults else (shown or {}).get(dest, argparse.SUPPRESS)
        options = _options(field, hints[field.name], flag)
        if default is not argparse.SUPPRESS:
            options["help"] += f" (default: {default!r})".replace("%", "%%")
        # The default is set after the help is written (BooleanOptionalAction would add its own).
        parser.add_argument("--" + flag, dest=dest, default=argparse.SUPPRESS, **options)
        if keep_defaults:
            parser.set_defaults(**{dest: field.default})


def _options(field, hint, flag: str) -> dict:
    """add_argument's options for one setting, but its dest and default."""
    options = {key: field.metadata[key] for key in ARGPARSE_KEYS if key in field.metadata}
    kind, optional = _value_type(hint)
    if kind is bool:
        return dict(options, action=argparse.BooleanOptionalAction)
    options["type"] = _none_or(kind) if optional else kind
    if "choices" not in options:  # with choices, argparse lists them instead
        options.setdefault("metavar", flag.replace("-", "_").upper())
    if "const" in options:
        options["nargs"] = "?"
    return options


def _value_type(hint) -> tuple[type, bool]:
    """(the value's type, whether None is allowed) of an annotation such as `float | None`."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kinds = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(kinds) != 1:
            raise TypeError(f"a setting holds one type (or None), got {hint}")
        return kinds[0], True
    return hint, False


def _none_or(kind):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)
    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse
