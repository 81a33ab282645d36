#!/usr/bin/env python
"""Serve a trained model over HTTP: a JSON API with dynamic batching, and a web page.

    python scripts/serve.py RUN_OR_ARTIFACT_OR_EXPORT [--host 127.0.0.1] [--port 8000]
        [--max-batch 8] [--max-wait-ms 5] [--workers 1] [--api-key KEY] ...

RUN_OR_ARTIFACT_OR_EXPORT is a run folder, a W&B model artifact (``artifact:[entity/]project/
model-<run id>:best``, downloaded as ``scripts/predict.py`` does) or an export folder
(``scripts/export_model.py``). Then:

    curl -F text="a red ring" -F image=@pic.png http://127.0.0.1:8000/predict
    open http://127.0.0.1:8000/ (the page) and http://127.0.0.1:8000/docs (OpenAPI)

``--workers N`` runs N uvicorn worker processes behind the one port, each with its own copy of
the model and its own batcher (uvicorn's supervisor restarts a worker that dies). The API key is
``--api-key`` or the ``MM_API_KEY`` environment variable; with one, /predict and /info answer 401
without it (``X-API-Key: KEY`` or ``Authorization: Bearer KEY``). SIGTERM (or Ctrl-C) stops
accepting, lets the requests in flight finish and exits 0. See ``mm/serve/server.py`` for the
endpoints and limits, README "Deploy > Serve" for process managers and containers.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys


def parse(argv: list[str] | None):
    from mm.artifacts import run_argument
    from mm.serve.server import ENV_API_KEY, ServeSettings

    d = ServeSettings(model="")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=run_argument, help="run folder, artifact:[entity/]project/name:alias, or export folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes behind the one port")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="most samples in one forward")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, help="how long a batch waits to fill")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="requests admitted at once per worker; more get 503")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb, help="largest uploaded file")
    p.add_argument("--max-body-mb", type=float, default=d.max_body_mb, help="largest request body")
    p.add_argument("--max-text-chars", type=int, default=d.max_text_chars, help="longest text field")
    p.add_argument("--timeout-s", type=float, default=d.timeout_s, help="longest a request may take (504 after)")
    p.add_argument("--require-all", action="store_true",
                   help="refuse requests lacking a modality instead of using the learned missing embedding")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker (default: the CPU count divided by --workers)")
    p.add_argument("--api-key", default=os.environ.get(ENV_API_KEY) or None,
                   help=f"require this key on /predict (default: ${ENV_API_KEY})")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be at least 1, got {args.workers}")
    if not (0 <= args.port < 65536):
        p.error(f"--port must be in 0..65535, got {args.port}")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    try:
        settings = ServeSettings(model=str(args.model), max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                                 max_queue=args.max_queue, max_upload_mb=args.max_upload_mb, max_body_mb=args.max_body_mb,
                                 max_text_chars=args.max_text_chars, timeout_s=args.timeout_s, api_key=args.api_key,
                                 require_all=args.require_all, threads=threads)
    except ValueError as err:
        p.error(str(err).replace("_", "-"))
    return args, settings


def main(argv: list[str] | None = None) -> int:
    args, settings = parse(argv)
    import uvicorn

    from mm.serve.models import model_kind
    from mm.serve.server import ENV_SETTINGS, create_app, load_model

    # A bad model folder fails here, before a port is opened (the workers load their own copy).
    try:
        model_kind(settings.model)
        model = load_model(settings.model, settings.threads) if args.workers == 1 else None
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.workers == 1:
        app = create_app(settings, model)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                timeout_graceful_shutdown=settings.timeout_s + 5)
        server = GracefulServer(config)
        server.run()
        return 0
    os.environ[ENV_SETTINGS] = settings.to_env()
    config = uvicorn.Config("mm.serve.server:app_from_env", factory=True, host=args.host, port=args.port,
                            workers=args.workers, log_level=args.log_level,
                            timeout_graceful_shutdown=settings.timeout_s + 5)
    from uvicorn.supervisors import Multiprocess

    sock = config.bind_socket()
    Multiprocess(config, sockets=[sock]).run()
    return 0


def _server_class():
    import uvicorn

    class Graceful(uvicorn.Server):
        """uvicorn's server, which re-raises a SIGTERM it handled once it has shut down (so the
        process would die of it); this one exits 0 after the graceful shutdown instead."""

        def handle_exit(self, sig: int, frame) -> None:
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:
                self._captured_signals.remove(sig)
                logging.getLogger("uvicorn.error").info("SIGTERM: finishing the requests in flight")

    return Graceful


def GracefulServer(config):  # noqa: N802 - a class made on demand (uvicorn is imported lazily)
    return _server_class()(config)


if __name__ == "__main__":
    sys.exit(main())
