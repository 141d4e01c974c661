"""Command line: run one snippet and print the body the HTTP service would answer.

    python -m jail -l javascript -e 'return x + 3' --scope '{"x": 2}'
    {"output": 5}

Exit status: 0 for a result, 1 for an ExecutionError or SandboxError, 2 for
bad arguments (RequestError).
"""

import argparse
import json
import sys

import jail
from jail._report import error_body, result_body


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jail", description="Run a snippet in a sandbox.")
    parser.add_argument("-l", "--language", default="python", choices=jail.LANGUAGES)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-e", "--code", help="the snippet (a function body: `return` gives the output)")
    source.add_argument("file", nargs="?", type=argparse.FileType("r"), help="a file holding the snippet, or - for stdin")
    parser.add_argument("--scope", default="{}", help="a JSON object: its keys become variables of the snippet")
    parser.add_argument("--types", default="{}", help="a JSON object: JSON Pointer -> type name for typed scope values")
    parser.add_argument("--timeout-ms", type=int)
    parser.add_argument("--memory-mb", type=int)
    parser.add_argument("--output-bytes", type=int)
    parser.add_argument("--backend", default="native", choices=("native", "bwrap", "nsjail"))
    args = parser.parse_args(argv)

    code = args.code if args.code is not None else args.file.read()
    limits = {name: getattr(args, name) for name in ("timeout_ms", "memory_mb", "output_bytes")
              if getattr(args, name) is not None}
    try:
        scope, types = json.loads(args.scope), json.loads(args.types)
    except ValueError as exc:
        parser.error(f"--scope and --types take JSON: {exc}")
    try:
        result = jail.run(code, args.language, scope, types=types, limits=limits or None,
                          policy=jail.Policy(backend=args.backend))
    except jail.RequestError as error:
        print(json.dumps(error_body(error)), file=sys.stderr)
        return 2
    except jail.JailError as error:
        print(json.dumps(error_body(error)))
        return 1
    print(json.dumps(result_body(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
