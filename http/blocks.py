"""The operator's building blocks: loading them (``JAIL_BLOCKS=package.module:attribute``,
a mapping of names to callables) and describing them for ``GET /blocks`` (name,
parameters as JSON Schema from the signature and annotations where it can,
docstring), so that an agent can be prompted with the catalogue."""

import collections.abc
import datetime
import decimal
import importlib
import inspect
import types
import typing

from jail import _run


def load(spec: str) -> dict:
    """{name: callable} from "package.module:attribute"; ValueError saying what is wrong."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"JAIL_BLOCKS={spec!r}: expected package.module:attribute (a mapping of names to callables)")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module raised while it loaded
        raise ValueError(f"JAIL_BLOCKS={spec!r}: cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    try:
        blocks = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"JAIL_BLOCKS={spec!r}: {module_name} has no attribute {attribute!r}") from None
    except Exception as exc:  # made on first use, and that failed (a module __getattr__)
        raise ValueError(f"JAIL_BLOCKS={spec!r}: cannot load {attribute}: {type(exc).__name__}: {exc}") from None
    if not isinstance(blocks, collections.abc.Mapping):
        raise ValueError(f"JAIL_BLOCKS={spec!r}: {attribute} is a {type(blocks).__name__}, not a mapping of "
                         f"names to callables")
    checked = {}
    for name, function in blocks.items():
        for language in _run.LANGUAGES:  # a block may be called from either language
            try:
                _run._check_scope_key(name, language, "JAIL_BLOCKS")
            except Exception as exc:
                raise ValueError(f"JAIL_BLOCKS={spec!r}: the name {name!r} cannot be used: {exc}") from None
        if not callable(function):
            raise ValueError(f"JAIL_BLOCKS={spec!r}: {name!r} is not callable but {type(function).__name__}")
        checked[name] = function
    return checked


def catalogue(blocks: dict) -> list:
    return [describe(name, function) for name, function in sorted(blocks.items())]


def describe(name: str, function) -> dict:
    """One block for GET /blocks: its parameters as a JSON Schema object (in call
    order: `positional`), its result's schema and its docstring."""
    entry = {"name": name, "description": inspect.getdoc(function) or "",
             "parameters": {"type": "object", "properties": {}, "required": []}, "positional": []}
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        entry["parameters"]["additionalProperties"] = True
        return entry
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # unresolvable string annotations: the raw ones, where they are types
        hints = {}
    parameters = entry["parameters"]
    parameters["additionalProperties"] = False
    for parameter in signature.parameters.values():
        if parameter.name == "context" and parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            continue  # the host's, never the snippet's
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            parameters["additionalProperties"] = True
            continue
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            entry["variadic"] = parameter.name
            continue
        schema = schema_of(hints.get(parameter.name, parameter.annotation))
        if parameter.default is not inspect.Parameter.empty and _json_default(parameter.default):
            schema = {**schema, "default": parameter.default}
        parameters["properties"][parameter.name] = schema
        if parameter.default is inspect.Parameter.empty:
            parameters["required"].append(parameter.name)
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            entry["positional"].append(parameter.name)
    returns = hints.get("return", signature.return_annotation)
    if returns is not inspect.Signature.empty:
        entry["returns"] = schema_of(returns)
    return entry


def _json_default(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str)) and value == value


SIMPLE = {
    int: {"type": "integer"}, float: {"type": "number"}, str: {"type": "string"}, bool: {"type": "boolean"},
    type(None): {"type": "null"}, dict: {"type": "object"}, list: {"type": "array"}, tuple: {"type": "array"},
    bytes: {"type": "string", "contentEncoding": "base64", "description": "bytes (typed `bytes`)"},
    datetime.datetime: {"type": "string", "format": "date-time", "description": "a date (typed `date`)"},
    decimal.Decimal: {"type": "string", "description": "a decimal (typed `decimal`)"},
}


def schema_of(annotation) -> dict:
    """The JSON Schema of an annotation where it maps to one; {} (anything) where not."""
    if annotation in (inspect.Parameter.empty, typing.Any) or isinstance(annotation, str):
        return {}
    try:
        if annotation in SIMPLE:
            return dict(SIMPLE[annotation])
    except TypeError:  # unhashable annotation
        return {}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [schema_of(arg) for arg in args]}
    if origin is typing.Literal:
        return {"enum": [arg for arg in args if _json_default(arg)]}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": schema_of(args[0])}
        return {"type": "array", "prefixItems": [schema_of(arg) for arg in args], "minItems": len(args),
                "maxItems": len(args)}
    if origin in (list, set, frozenset, collections.abc.Sequence, collections.abc.Iterable):
        return {"type": "array", "items": schema_of(args[0])} if args else {"type": "array"}
    if origin in (dict, collections.abc.Mapping):
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = schema_of(args[1])
        return schema
    return {}
