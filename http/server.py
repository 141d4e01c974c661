"""The aiohttp service (DESIGN.md section 4).

``create_app(settings)`` builds the Application; ``main()`` serves it
(``python -m jail_http`` or the ``jail-server`` console script).
"""

import argparse
import logging

from aiohttp import web

from jail import _process, _runtime

log = logging.getLogger("jail_http")


async def healthz(request):
    return web.json_response({"status": "ok"})


async def readyz(request):
    """Ready when a real sandbox runs a trivial program on this host."""
    try:
        outcome = await _process.run_program(_runtime.python(), ("-c", "print(1)"))
    except Exception as exc:  # any failure of the sandbox itself means not ready
        return web.json_response({"status": "unavailable", "reason": str(exc)}, status=503)
    if outcome.stdout != b"1\n":
        return web.json_response({"status": "unavailable", "reason": "the trivial run gave a wrong answer"},
                                 status=503)
    return web.json_response({"status": "ready"})


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def main(argv=None):
    parser = argparse.ArgumentParser(prog="jail-server", description="Serve the snippet sandbox over HTTP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    web.run_app(create_app(), host=args.host, port=args.port, print=lambda text: log.info(text))


if __name__ == "__main__":
    main()
