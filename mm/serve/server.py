"""The real-time inference server: FastAPI on uvicorn, requests batched dynamically.

``create_app(settings)`` builds the ASGI app; ``scripts/serve.py`` runs it (one process, or several
uvicorn workers behind one port). Endpoints:

- ``POST /predict`` (multipart/form-data): a ``text`` field and ``image`` / ``audio`` file uploads,
  whichever of the model's modalities the client has; answers ``{"label", "probabilities",
  "model", "latency_ms", "batch_size", "missing"}`` (a token-tagging model: ``{"tokens", "tags"}``;
  regression: ``{"value"}``). A modality left out is served by the model's learned missing
  embedding (listed under ``missing``) unless ``require_all`` is set; a request with none of them
  is refused.
- ``GET /health`` (the process answers), ``GET /ready`` (the model is loaded and has answered a
  warm-up batch; 503 until then), ``GET /info`` (model id, modalities, head, classes, limits),
  ``GET /docs`` (OpenAPI), ``GET /`` the web page (``mm/serve/page``).

Batching: each request is decoded on its own (a thread, so decoding overlaps), then queued for
``Batcher``, which runs up to ``max_batch`` samples in one forward, waiting at most ``max_wait_ms``
after the first for others to arrive. FastAPI and uvicorn have no batching of their own; LitServe
does, but it cannot bound its queue (see README "Deploy > Serve").

It holds up: at most ``max_queue`` /predict requests are admitted at once (reading, decoding,
queued or running); the next is answered 503 at once, before its body is read. A body over
``max_body_mb`` is refused with 413 from its Content-Length (or as soon as a chunked body passes
it), a file over ``max_upload_mb`` too; a request that takes longer than ``timeout_s`` gets 504.
Uploads are decoded by the encoders' own code (``Encoder.load``) from a private temporary folder:
the client sends bytes and never names a path on the server. Every refusal is a 4xx with a
``detail`` message and the server goes on serving. On SIGTERM uvicorn stops accepting, the
requests in flight finish, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from mm.serve.batcher import Batcher, QueueFull
from mm.serve.models import BadInput, answer, load_model

PAGE = Path(__file__).parent / "page"
ENV_SETTINGS = "MM_SERVE_SETTINGS"  # JSON of ``ServeSettings``, how uvicorn's worker processes get theirs
ENV_API_KEY = "MM_API_KEY"
PUBLIC = ("/health", "/ready", "/", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc")


@dataclass
class ServeSettings:
    """What ``scripts/serve.py`` passes on (its flags); the defaults are its defaults.

    Attributes:
        model: a run folder (or a downloaded W&B artifact's folder) or an export folder.
        max_batch: most samples in one forward.
        max_wait_ms: how long the first sample of a batch waits for others.
        max_queue: most /predict requests admitted at once; the next is answered 503.
        max_upload_mb: largest uploaded file.
        max_body_mb: largest request body (checked before it is read).
        max_text_chars: longest text field.
        timeout_s: longest a request may take (504 after).
        api_key: when set, /predict and /info need it (``X-API-Key`` or ``Authorization: Bearer``).
        require_all: refuse a request that lacks one of the model's modalities (422) instead of
            using the learned missing embedding.
        threads: torch threads per process (None: torch's default).
    """

    model: str
    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 64
    max_upload_mb: float = 20.0
    max_body_mb: float = 50.0
    max_text_chars: int = 10_000
    timeout_s: float = 30.0
    api_key: str | None = None
    require_all: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_text_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_upload_mb", "max_body_mb", "timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be at least 0, got {self.max_wait_ms}")

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServeSettings:
        raw = json.loads(os.environ[ENV_SETTINGS])
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


# -- request limits ---------------------------------------------------------------------------------

class Guard:
    """ASGI middleware in front of the app: the API key and the body limit, checked before the body
    is read (pure ASGI, so a refusal never passes through the app's error handling as a 500).

    With ``api_key`` a path outside ``PUBLIC`` (and the page's files) needs it as ``X-API-Key`` or
    ``Authorization: Bearer``, else 401. A POST body over ``limit`` bytes is answered 413 from its
    Content-Length; a chunked body is counted as it arrives and refused once it passes the limit.
    """

    def __init__(self, app: Any, limit: int, api_key: str | None) -> None:
        self.app, self.limit, self.api_key = app, limit, api_key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        path = scope["path"]
        if self.api_key and path not in PUBLIC and not path.startswith("/page/"):
            given = headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ")
            if not secrets.compare_digest(given, self.api_key.encode()):
                return await self._refuse(send, 401, "missing or wrong API key (send it as X-API-Key)",
                                          [(b"www-authenticate", b"Bearer")])
        if scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send, 413, f"request body of {int(declared)} bytes is over the limit of {self.limit}")
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # the app's exception handler answers it
                raise HTTPException(413, f"request body is over the limit of {self.limit} bytes",
                                    headers={"Connection": "close"})
            return message

        await self.app(scope, counted, send)

    @staticmethod
    async def _refuse(send: Any, status: int, detail: str, extra: list | None = None) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close"), *(extra or [])]})
        await send({"type": "http.response.body", "body": body})


# -- the app ----------------------------------------------------------------------------------------

PREDICT_BODY = {  # the OpenAPI description of the multipart form /predict reads by hand
    "parameters": [{"name": "explain", "in": "query", "required": False, "schema": {"type": "boolean", "default": False},
                    "description": "also answer each modality's contribution (exact Shapley values, mm.explain)"}],
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "properties": {
            "text": {"type": "string", "description": "the text (token tagging: words split at whitespace)"},
            "image": {"type": "string", "format": "binary", "description": "a picture file (PNG, JPEG, ...)"},
            "audio": {"type": "string", "format": "binary", "description": "a recording (WAV, FLAC, OGG)"},
        },
        "additionalProperties": False}}}},
    "responses": {"200": {"description": "the prediction", "content": {"application/json": {"example": {
        "label": "cat", "probabilities": {"cat": 0.91, "dog": 0.09}, "model": "run@0123456789ab",
        "latency_ms": 12.3, "batch_size": 4, "missing": []}}}},
        "401": {"description": "no or wrong API key"}, "413": {"description": "body or file too large"},
        "415": {"description": "not multipart/form-data"},
        "422": {"description": "a field the model cannot take, an empty or undecodable file"},
        "503": {"description": "the queue is full or the model is not loaded yet"},
        "504": {"description": "the request took longer than the timeout"}},
}


class State:
    """What one server process holds: its settings, the model once loaded, the batcher."""

    def __init__(self, settings: ServeSettings, model: Any = None) -> None:
        self.settings = settings
        self.model = model
        self.error: str | None = None
        self.ready = False
        self.batcher = Batcher(self._predict, settings.max_batch, settings.max_wait_ms / 1000, settings.max_queue)

    def _predict(self, samples: list[dict]) -> list[dict]:
        return self.model.predict(samples)

    def load(self) -> None:
        """Load the model (unless given) and run one warm-up sample, then mark the process ready."""
        try:
            if self.model is None:
                self.model = load_model(self.settings.model, self.settings.threads)
            warm = {"text": "warm up"} if "text" in self.model.modalities else {}
            if self.model.head == "token":
                warm["words"] = ["warm", "up"]
            self.model.predict([warm])
            self.ready = True
        except Exception as err:  # the process stays up to say why on /ready
            self.error = f"{type(err).__name__}: {err}"
            raise


def create_app(settings: ServeSettings, model: Any = None, load_in_background: bool = True) -> FastAPI:
    """The ASGI app serving ``settings.model`` (or ``model``, an object with ``TorchModel``'s interface).

    The model loads in a background thread after startup, so ``/health`` answers at once and
    ``/ready`` says 503 until the model has answered a warm-up batch.
    """
    state = State(settings, model)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load_in_background:
            threading.Thread(target=state.load, name="load-model", daemon=True).start()
        else:
            state.load()
        yield
        state.batcher.executor.shutdown(wait=True)

    app = FastAPI(title="mm inference server", lifespan=lifespan,
                  description="Predictions of a trained mm model: POST /predict with the model's modalities.")
    app.state.mm = state

    @app.get("/health", summary="the process is up")
    async def health() -> dict:
        return {"status": "ok", "pid": os.getpid()}

    @app.get("/ready", summary="the model is loaded and warm")
    async def ready() -> JSONResponse:
        if state.ready:
            return JSONResponse({"ready": True, "model": state.model.model_id})
        return JSONResponse({"ready": False, "error": state.error}, status_code=503)

    @app.get("/info", summary="the model and the server's limits")
    async def info() -> dict:
        if not state.ready:
            raise HTTPException(503, "the model is not loaded yet")
        m = state.model
        limits = {k: getattr(settings, k) for k in ("max_batch", "max_wait_ms", "max_queue", "max_upload_mb",
                                                    "max_body_mb", "max_text_chars", "timeout_s", "require_all")}
        return {"model": m.model_id, "kind": m.kind, "modalities": m.modalities, "files": m.media,
                "head": m.head, "classes": [str(c) for c in m.classes], "limits": limits,
                "in_flight": state.batcher.admitted, "batches": state.batcher.batches, "samples": state.batcher.samples}

    @app.post("/predict", summary="predict one sample", openapi_extra=PREDICT_BODY)
    async def predict(request: Request) -> JSONResponse:
        start = time.perf_counter()
        if not state.ready:
            raise HTTPException(503, "the model is not loaded yet", headers={"Retry-After": "1"})
        try:
            state.batcher.admit()
        except QueueFull:
            raise HTTPException(503, f"server busy: {settings.max_queue} requests in flight",
                                headers={"Retry-After": "1"}) from None
        try:
            out = await asyncio.wait_for(handle(request), settings.timeout_s)
        except TimeoutError:
            raise HTTPException(504, f"the request took longer than {settings.timeout_s} s") from None
        finally:
            state.batcher.release()
        return JSONResponse({**out, "model": state.model.model_id,
                             "latency_ms": round((time.perf_counter() - start) * 1000, 3)})

    async def handle(request: Request) -> dict:
        m = state.model
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data") and not ctype.startswith("application/x-www-form-urlencoded"):
            raise HTTPException(415, f"send multipart/form-data (fields: {', '.join(m.modalities)}), not {ctype or 'no content type'!r}")
        explain = request.query_params.get("explain", "").lower() in ("1", "true", "yes")
        if explain and not (m.head == "classification" and getattr(m, "explains", False)):
            raise HTTPException(422, f"explain=true needs a classification model served from its run folder "
                                f"(this one: {m.head}, {m.kind})")
        async with request.form(max_files=len(m.media) + 1, max_fields=len(m.modalities) + 2,
                                max_part_size=4 * settings.max_text_chars + 1024) as form:
            sample, missing = await run_in_thread_decode(form, m)
        if explain:
            sample["explain"] = True
        try:
            pred, size = await state.batcher.submit(sample)
        except BadInput as err:
            raise HTTPException(err.status, str(err)) from None
        except Exception as err:  # the batch's forward failed: say so, and keep serving
            raise HTTPException(500, f"the model failed on this batch: {type(err).__name__}: {err}") from err
        return {**answer(m.head, pred), "batch_size": size, "missing": missing}

    async def run_in_thread_decode(form: Any, m: Any) -> tuple[dict, list[str]]:
        from starlette.concurrency import run_in_threadpool

        names = [k for k, _ in form.multi_items()]
        unknown = [k for k in names if k not in m.modalities]
        if unknown:
            raise HTTPException(422, f"unknown field(s) {unknown}; this model takes: {', '.join(m.modalities)}")
        repeated = sorted({k for k in names if names.count(k) > 1})
        if repeated:
            raise HTTPException(422, f"field(s) {repeated} given more than once")
        missing = [x for x in m.modalities if x not in form]
        if len(missing) == len(m.modalities):
            raise HTTPException(422, f"no input: send at least one of {', '.join(m.modalities)}")
        if missing and settings.require_all:
            raise HTTPException(422, f"missing required field(s) {missing} (the server runs with --require-all)")
        if m.head == "token" and "text" in missing:
            raise HTTPException(422, "a token-tagging model needs the text field")
        try:
            sample = await run_in_threadpool(decode_form, form, m, settings)
        except BadInput as err:
            raise HTTPException(err.status, str(err)) from None
        return sample, missing

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(PAGE / "index.html")

    app.mount("/page", StaticFiles(directory=PAGE), name="page")
    app.add_middleware(Guard, limit=int(settings.max_body_mb * 2**20), api_key=settings.api_key)
    return app


def decode_form(form: Any, m: Any, settings: ServeSettings) -> dict[str, Any]:
    """The form's values decoded by the model's encoders (in a worker thread); ``BadInput`` names
    the field and the reason. Files are written to a private temporary folder under fixed names."""
    sample: dict[str, Any] = {}
    limit = int(settings.max_upload_mb * 2**20)
    with tempfile.TemporaryDirectory(prefix="mm-serve-") as tmp:
        for name in m.modalities:
            if name not in form:
                continue
            value = form[name]
            if name in m.media:
                if not isinstance(value, UploadFile):
                    raise BadInput(f"{name} must be an uploaded file (multipart), not a text value: "
                                   "the server reads no paths")
                data = value.file.read(limit + 1)
                if not data:
                    raise BadInput(f"{name} upload {value.filename!r} is empty")
                if len(data) > limit:
                    raise BadInput(f"{name} upload {value.filename!r} is over the limit of {settings.max_upload_mb} MB", 413)
                path = Path(tmp) / name
                path.write_bytes(data)
                try:
                    sample[name] = m.load(name, name, Path(tmp))
                except Exception as err:
                    reason = str(err).replace(f"'{path}'", repr(value.filename)).replace(str(path), repr(value.filename))
                    raise BadInput(f"{name}: {reason.removeprefix(f'{name}: ')}") from None
            else:
                if isinstance(value, UploadFile):
                    raise BadInput(f"{name} must be a text field, not a file")
                if len(value) > settings.max_text_chars:
                    raise BadInput(f"{name} is {len(value)} characters, over the limit of {settings.max_text_chars}")
                if not value.strip():
                    raise BadInput(f"{name} is empty")
                sample[name] = m.load(name, value, Path(tmp))
                if m.head == "token":
                    sample["words"] = value.split()
    return sample


def app_from_env() -> FastAPI:
    """The app of one uvicorn worker process (``scripts/serve.py --workers N``): its settings come
    from ``$MM_SERVE_SETTINGS``, and it loads its own copy of the model."""
    return create_app(ServeSettings.from_env())
