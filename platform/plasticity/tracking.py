"""MLflow tracking: the only module that imports mlflow (tracking is an observer of the core).

- Store: ``--tracking-uri`` / ``$PLASTICITY_TRACKING_URI`` / ``$MLFLOW_TRACKING_URI``, else
  ``sqlite:///mlflow.db`` in the working directory (embedded; artifacts in ``mlruns/`` beside it).
  ``none`` turns tracking off. The driver opens the store (creating the sqlite schema) before any
  worker runs; Ray trials never write to a sqlite store themselves.
- :class:`MlflowSink` is an :class:`~plasticity.events.Sink`: params once (values that change
  later, e.g. PBT mutations, become ``hparam/<key>`` metrics: a logged param is never rewritten),
  metrics batched (``log_batch`` within MLflow's per-request limits), rules as JSON + heatmap
  artifacts with their provenance as params/tags, learned rules registered in the model registry.
  The run is created on the first metric, rule or artifact: a run that fails before producing
  anything (bad input) leaves nothing in the store.
- Rules come back by reference: ``models:/NAME/VERSION`` (or ``models:/NAME/latest``).
- A store that goes away (server restarted, sqlite locked) does not end the run: every client
  call is retried with backoff for up to ``$PLASTICITY_TRACKING_RETRY_S`` seconds (default 300)
  on a transient error; while the store is down, metrics stay buffered (a failed flush is tried
  again later, the run goes on) and are sent once it is back. Resending a batch is idempotent:
  a metric keeps its timestamp, and MLflow stores an identical (key, step, timestamp, value) once.
- A tracking server with authentication (``plasticity server``: MLflow's basic auth): the client
  sends ``$MLFLOW_TRACKING_USERNAME`` / ``$MLFLOW_TRACKING_PASSWORD`` (else
  ``~/.mlflow/credentials``), as MLflow does. A refusal (401 bad credentials, 403 no permission) is
  never retried: it is one line naming the fix (exit 2), and since the store is opened before a
  command runs, a refused run writes nothing.
- Many writers: a sqlite store's schema is created or migrated under an inter-process file lock
  (``mlflow.db.lock`` beside it); the other processes wait for it. A failure during a command
  that the retries do not cure (a refusal included) is one warning: the command keeps its output
  and is told how to log it later (``plasticity log OUT``, :class:`GuardedSink`).
- Runs that resume as themselves: every run has a key tag (``plasticity.run_key``, also written
  to ``OUT/tracking.json`` before the run is made): a create-run retried after a lost reply finds
  the run instead of making another, and ``--resume`` continues the killed command's run, every
  metric step once (:meth:`MlflowSink.rewind`).

Metric names (documented in docs/tracking.md): ``<family>/<name>``, e.g. ``meta/loss``,
``transfer/mnist/large_T1``, ``evolution/loss_best``, ``attack/pgd_linf/eps_0.3``; characters
MLflow refuses are replaced by ``_``. Registered rules are named ``<method>-<dataset>-T<T>``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from . import PlasticityError
from .events import Sink

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# `--json` prints one JSON object on stdout: no "View run at" links from MLflow there
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.utils import validation as _limits  # noqa: E402

from .report import registered_name  # noqa: E402,F401  (re-exported: tracking.registered_name)

for _name in ("mlflow", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)

DEFAULT_URI = "sqlite:///mlflow.db"
EXPERIMENT = "plasticity"
OFF = ("none", "off", "false", "0", "")
SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "file")
_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. /:]")


_REFUSED = re.compile(r"error code (401|403)\b")


def _refused(exc: BaseException) -> int | None:
    """401 / 403 when the server refused the request's credentials, else None."""
    if isinstance(exc, MlflowException):
        if exc.error_code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            return 401 if exc.error_code == "UNAUTHENTICATED" else 403
        m = _REFUSED.search(str(exc))
        return int(m.group(1)) if m else None
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if status in (401, 403) else None


def _user() -> str | None:
    from mlflow.utils.credentials import read_mlflow_creds

    return read_mlflow_creds().username


def refused_error(uri: str, code: int) -> PlasticityError:
    """The one-line error for a request the tracking server refused (no retry)."""
    user = _user()
    if code == 401:
        who = f"user '{user}'" if user else "no user name given"
        return PlasticityError(
            f"tracking server {uri} refused the credentials (401 Unauthorized, {who}): set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials) to "
            "an account of that server")
    return PlasticityError(f"tracking server {uri} denied user '{user}' (403 Permission denied): "
                           "ask its admin for permission on the experiment, or use another "
                           "--tracking-uri")


def transient(exc: BaseException) -> bool:
    """A failure worth retrying: the store unreachable or busy, not a refused request."""
    import requests

    if _refused(exc):
        return False
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, MlflowException):
        msg = str(exc)
        return (("API request to" in msg and "failed with exception" in msg)
                or exc.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
                or "database is locked" in msg)
    return False


class RetryingClient:
    """An MlflowClient whose calls are retried with backoff on transient errors for up to
    ``retry_s`` seconds (one warning line on stderr, one when the store is back). A request the
    server refused (bad credentials, no permission) is not retried: a one-line PlasticityError."""

    def __init__(self, client: MlflowClient, retry_s: float | None = None, uri: str = "?"):
        self.raw, self.uri = client, uri
        self.retry_s = float(os.environ.get("PLASTICITY_TRACKING_RETRY_S", "300")
                             if retry_s is None else retry_s)

    def __getattr__(self, name):
        attr = getattr(self.raw, name)
        if not callable(attr):
            return attr
        return lambda *args, **kw: self.retry(name, attr, *args, **kw)

    def retry(self, name: str, attr, *args, **kw):
        """``attr(*args, **kw)`` retried as every client call is (``name`` for the warning)."""
        deadline, delay, failed = time.monotonic() + self.retry_s, 0.5, False
        while True:
            try:
                out = attr(*args, **kw)
                if failed:
                    print("plasticity: tracking store reachable again", file=sys.stderr)
                return out
            except Exception as exc:
                code = _refused(exc)
                if code:
                    raise refused_error(self.uri, code) from None
                if not transient(exc) or time.monotonic() + delay > deadline:
                    raise
                if not failed:
                    print(f"plasticity: warning: tracking store unavailable ({name}: "
                          f"{str(exc).splitlines()[0][:120]}); retrying for up to "
                          f"{self.retry_s:.0f} s", file=sys.stderr)
                failed = True
                time.sleep(delay)
                delay = min(2 * delay, 15.0)


def resolve_uri(uri: str | None) -> str | None:
    """The tracking URI in force (flag, then environment, then the default), made absolute for
    sqlite (Tune changes the working directory); None when tracking is off."""
    if uri is None:
        uri = os.environ.get("PLASTICITY_TRACKING_URI", os.environ.get("MLFLOW_TRACKING_URI"))
    if uri is None:
        uri = DEFAULT_URI
    if uri.strip().lower() in OFF:
        return None
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if ":" not in uri or scheme not in SCHEMES:
        raise PlasticityError(f"tracking URI '{uri}' is not supported: use sqlite:///FILE.db, "
                              "http://HOST:PORT or none")
    if scheme == "sqlite":
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:" and not path.startswith("/"):
            uri = f"sqlite:///{Path(path).resolve()}"
    return uri


def metric_key(key: str) -> str:
    """A metric or param name MLflow accepts (``T=1`` -> ``T_1``)."""
    return _BAD_KEY.sub("_", str(key))[: _limits.MAX_ENTITY_KEY_LENGTH]


class Store:
    """An opened tracking store: a client, its URI, and the experiments it holds."""

    def __init__(self, uri: str):
        self.uri = uri
        self.client = RetryingClient(MlflowClient(tracking_uri=uri, registry_uri=uri), uri=uri)
        self._ids: dict[str, str] = {}

    def experiment_id(self, name: str = EXPERIMENT) -> str:
        """The experiment's id, created on first use (artifacts beside a sqlite store)."""
        if name not in self._ids:  # one lookup per store, not one per trial of a sweep
            self._ids[name] = self._experiment_id(name)
        return self._ids[name]

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            location = (Path(self.uri[len("sqlite:///"):]).parent / "mlruns" / name).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by another process
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def sink(self, run_name: str, *, experiment: str = EXPERIMENT, parent_run_id: str | None = None,
             tags: dict | None = None, out: Path | None = None, run_id: str | None = None,
             register: bool = True) -> MlflowSink:
        """A sink logging to a new run (created lazily) or to the existing ``run_id``."""
        return MlflowSink(self, self.experiment_id(experiment), run_name, parent_run_id=parent_run_id,
                          tags=tags, out=out, run_id=run_id, register=register)


def child_runs(store: Store, parent_run_id: str, experiment: str = EXPERIMENT) -> list:
    """The active child runs of a parent run (MLflow ``Run`` objects)."""
    return store.client.search_runs([store.experiment_id(experiment)],
                                    filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                    max_results=10000)


def open_store(uri: str) -> Store:
    """Open (and for sqlite create) the store; an unreachable one is a one-line error."""
    if uri.startswith(("http://", "https://")):
        import requests
        from mlflow.utils.credentials import read_mlflow_creds

        creds = read_mlflow_creds()  # /health is open on MLflow's basic auth, not behind a proxy
        auth = (creds.username, creds.password) if creds.username and creds.password else None
        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5, auth=auth).raise_for_status()
        except requests.RequestException as exc:
            if _refused(exc):
                raise refused_error(uri, _refused(exc)) from None
            raise PlasticityError(f"tracking server {uri} is unreachable ({type(exc).__name__}): "
                                  "start it or pass --tracking-uri none") from None
    _probe_database(uri)
    lock = None
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        path = Path(uri[len("sqlite:///"):])
        if not path.parent.is_dir():
            raise PlasticityError(f"tracking store {uri}: folder {path.parent} does not exist")
        if path.is_dir() or (path.is_file() and path.stat().st_size and not _is_sqlite(path)):
            raise PlasticityError(f"tracking store {uri} cannot be used ({path} is not a sqlite "
                                  "database): pass another --tracking-uri (none: no tracking)")
        lock = path.with_name(path.name + ".lock")
    try:
        with _creation_lock(lock, uri):  # one process creates / migrates the schema, others wait
            store = Store(uri)  # MlflowClient() opens (creates) the store
            store.client.search_experiments(max_results=1)  # creates the tracking tables
            store.client.search_registered_models(max_results=1)  # and the registry's
    except PlasticityError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here means "unusable store"
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        fix = (f"move {uri[len('sqlite:///'):]} aside (a new one is created)" if lock
               else "check the store")
        raise PlasticityError(f"tracking store {uri} cannot be used ({msg[:200]}): {fix}, or pass "
                              "another --tracking-uri (none: no tracking)") from None
    return store


DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def _probe_database(uri: str, timeout: float = 5.0) -> None:
    """A database store whose server does not answer is one line now (MLflow would retry its
    engine with a warning per attempt, then fail): connect to its host and port once."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    if scheme not in DB_PORTS:
        return
    try:
        host, port = parts.hostname, parts.port or DB_PORTS[scheme]
    except ValueError:
        raise PlasticityError(f"tracking store {uri} cannot be used (malformed port): pass "
                              "another --tracking-uri (none: no tracking)") from None
    if not host:
        return  # a local socket: MLflow's own error says what is wrong
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise PlasticityError(f"tracking store {uri} cannot be used (no database answers at "
                              f"{host}:{port}: {type(exc).__name__}): start it or pass another "
                              "--tracking-uri (none: no tracking)") from None


def _is_sqlite(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


LOCK_S = 600.0  # how long a process waits for another one creating or migrating the store


@contextlib.contextmanager
def _creation_lock(lock: Path | None, uri: str):
    """An inter-process lock beside a sqlite store (``mlflow.db.lock``) while the store's schema
    is created or migrated: MLflow's migrations race otherwise (``duplicate column name``). The
    lock is an flock: a process that dies holding it releases it."""
    if lock is None:
        yield
        return
    from filelock import FileLock, Timeout

    wait = float(os.environ.get("PLASTICITY_STORE_LOCK_S", LOCK_S))
    try:
        with FileLock(str(lock), timeout=wait):
            yield
    except Timeout:
        raise PlasticityError(f"tracking store {uri}: another process held {lock} for {wait:.0f} s "
                              "(creating or migrating the store): wait for it to end, or pass "
                              "another --tracking-uri") from None


def _flat(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[metric_key(key)] = str(v)[: _limits.MAX_PARAM_VAL_LENGTH]
    return out


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


class MlflowSink(Sink):
    """Log one command run (or one trial) to MLflow; see the module docstring."""

    FLUSH_S = 10.0

    def __init__(self, store: Store, experiment_id: str, run_name: str, *, parent_run_id=None,
                 tags=None, out: Path | None = None, run_id: str | None = None, register=True):
        self.store, self.client = store, store.client
        self.experiment_id, self.run_name = experiment_id, run_name
        self.parent_run_id, self.out, self.register = parent_run_id, out, register
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.run_id = run_id
        self._params: dict[str, str] = {}
        self._logged: dict[str, str] = {}
        self._metrics: list = []
        self._last_flush = time.time()
        self._retry_at = 0.0  # after a failed flush: when to try again
        self._step = 0
        self.registered: list[tuple[str, str]] = []
        self.closed = False
        # the run's key (tag plasticity.run_key): a create-run retried after a lost reply finds
        # the run it made; a resumed command finds its run by it (``state_file``: tracking.json)
        self.run_key = uuid.uuid4().hex
        self.state_file: Path | None = None
        self.reopen_on_start = False  # a resumed run: RUNNING again when it logs
        self._started = False
        self._held: dict[str, set] = {}  # after rewind: steps the store holds past the checkpoint

    # --- run life cycle -------------------------------------------------------------------
    def find_run(self, key: str | None = None):
        """The run of this experiment tagged ``plasticity.run_key = key`` (default: ours)."""
        runs = self.client.search_runs([self.experiment_id], max_results=1, filter_string=
                                       f"tags.`plasticity.run_key` = '{key or self.run_key}'")
        return runs[0] if runs else None

    def _write_state(self) -> None:
        if self.state_file is not None:
            from .files import atomic_write_text

            atomic_write_text(self.state_file, json.dumps(
                {"tracking_uri": self.store.uri, "run_key": self.run_key, "run_id": self.run_id}))

    def _create(self, tags: dict) -> str:
        """create_run, retried on transient errors; a retry first looks for the run the earlier
        request may have made (stored, reply lost), so a lost reply never makes a second run."""
        tried = []

        def once():
            if tried:
                found = self.client.raw.search_runs(
                    [self.experiment_id], max_results=1,
                    filter_string=f"tags.`plasticity.run_key` = '{self.run_key}'")
                if found:
                    return found[0].info.run_id
            tried.append(1)
            return self.client.raw.create_run(self.experiment_id, run_name=self.run_name,
                                              tags=tags).info.run_id

        return self.client.retry("create_run", once)

    def start(self) -> str:
        """Create the run now (normally it is created on the first metric, rule or artifact)."""
        if self.run_id is None:
            tags = {**self.tags, "plasticity.run_key": self.run_key}
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            self._write_state()  # the key first: a kill during create_run still finds the run
            self.run_id = self._create(tags)
            self._write_state()
        elif not self._started:
            existing = self.client.get_run(self.run_id).data.params
            self._logged.update(existing)
            if self.reopen_on_start:
                self.client.update_run(self.run_id, status="RUNNING")
        self._started = True
        self._flush_params()
        return self.run_id

    def rewind(self, step: int, history: list[tuple[dict, int]] = (), prefix: str = "") -> None:
        """Resumed after ``step``: the points the killed run logged past it are not logged again
        (MLflow cannot take them back: the store's ones stay), and the points of ``history``
        (``(metrics, step)`` up to the checkpoint) that never reached the store (buffered at the
        kill) are logged now. Every (key, step) ends in the store once."""
        self._flush_metrics()  # (makes the run if need be) the store holds what we logged
        held: dict[str, set] = {}
        for key in self.client.get_run(self.run_id).data.metrics:
            held[key] = {m.step for m in self.client.get_metric_history(self.run_id, key)}
        self._held.update({k: {s for s in v if s > step} for k, v in held.items()
                           if k.startswith(metric_key(prefix))})
        for metrics, s in history:
            missing = {k: v for k, v in metrics.items() if s not in held.get(metric_key(k), ())}
            if missing:
                self.metrics(missing, s)

    def reopen(self) -> None:
        """Mark an existing run RUNNING again (a resumed sweep's parent)."""
        self.reopen_on_start = True
        self.start()

    def delete(self) -> None:
        """Soft-delete the run (a trial that will be run again): it leaves the default views."""
        if self.run_id is not None:
            self.client.delete_run(self.run_id)
        self.closed = True

    def _flush_params(self) -> None:
        if not self._started:
            return
        new = {k: v for k, v in self._params.items() if k not in self._logged}
        for chunk in _chunks(sorted(new.items()), _limits.MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in chunk])
        self._logged.update(new)
        self._params.clear()

    def _flush_metrics(self) -> None:
        if not self._started:
            self.start()
        while self._metrics:  # a batch leaves the buffer only once the store has it
            chunk = self._metrics[:_limits.MAX_METRICS_PER_BATCH]
            self.client.log_batch(self.run_id, metrics=chunk)
            del self._metrics[:len(chunk)]
        self._last_flush = time.time()

    def _try_flush_metrics(self) -> None:
        """Flush during the run without waiting for a store that is down: the metrics stay
        buffered and the flush is tried again after FLUSH_S (close() waits for the store)."""
        retry_s = self.client.retry_s
        self.client.retry_s = 0.0
        try:
            self._flush_metrics()
        except Exception as exc:
            if not transient(exc):
                raise
            print(f"plasticity: warning: tracking store unavailable; {len(self._metrics)} metrics "
                  f"kept, retrying in {self.FLUSH_S:.0f} s", file=sys.stderr)
            self._retry_at = time.time() + self.FLUSH_S
        finally:
            self.client.retry_s = retry_s

    # --- Sink ------------------------------------------------------------------------------
    def params(self, params: dict) -> None:
        flat = _flat(params)
        now = int(time.time() * 1000)
        for k, v in flat.items():
            old = self._logged.get(k, self._params.get(k))
            if old is None:
                self._params[k] = v
            elif old != v:  # a mutated hyperparameter: never rewrite the logged param
                try:
                    self._metrics.append(Metric(metric_key(f"hparam/{k}"), float(v), now, self._step))
                except ValueError:
                    self.tags[metric_key(f"hparam.{k}")] = v
        if self.run_id is not None:
            self._flush_params()

    def metrics(self, metrics: dict, step: int | None = None) -> None:
        now = int(time.time() * 1000)
        self._step = self._step if step is None else int(step)
        at = 0 if step is None else self._step  # a summary value: once, at step 0 (not a
        #                                         one-point curve at the run's last step)
        for k, v in metrics.items():
            try:
                v = float(v)
            except (TypeError, ValueError):
                continue
            key = metric_key(k)
            if at in self._held.get(key, ()):
                continue  # logged by the killed run this one resumes: once is enough
            self._metrics.append(Metric(key, v if math.isfinite(v) else float("nan"), now, at))
        if time.time() >= self._retry_at and (len(self._metrics) >= _limits.MAX_METRICS_PER_BATCH
                                               or time.time() - self._last_flush > self.FLUSH_S):
            self._try_flush_metrics()

    def rule(self, name: str, rule, path: Path | None = None, heatmap: Path | None = None) -> None:
        """The rule's JSON and heatmap under ``rules/<name>/``, its key parameters and provenance
        as params/tags; a learned rule (saved to ``path``) is registered. ``heatmap``: a picture
        already rendered (by a Tune trial), copied instead of rendered again in the driver."""
        from .report import heatmap_title, rule_heatmap
        from .rules.io import save_rule

        self.start()
        key = metric_key(name).replace("/", "_")
        prov = dict(rule.provenance or {})
        info = {"T": rule.T, "mode": rule.mode, "update_on": rule.scheme.update_on,
                "output_rows": rule.scheme.output_rows, "output.param": rule.output.param,
                "rnn.param": None if rule.rnn is None else rule.rnn.param,
                **{f"provenance.{k}": v for k, v in prov.items() if not isinstance(v, dict)}}
        self.params({f"rule.{key}.{k}": v for k, v in info.items()})
        tags = {f"rule.{key}.method": prov.get("method", "unknown"),
                f"rule.{key}.dataset": prov.get("dataset", "-")}
        cfg = prov.get("config") if isinstance(prov.get("config"), dict) else {}
        for field in ("seed", "neurons", "k", "T"):
            if field in cfg:
                tags[f"rule.{key}.{field}"] = cfg[field]
        self.client.log_batch(self.run_id, tags=[RunTag(metric_key(k), str(v)) for k, v in tags.items()])
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "rule.json"
            if path is not None and Path(path).is_file():
                src.write_text(Path(path).read_text())
            else:
                save_rule(rule, src)
            if heatmap is not None and Path(heatmap).is_file():
                shutil.copyfile(heatmap, Path(tmp) / "heatmap.png")
            else:
                rule_heatmap(rule, Path(tmp) / "heatmap.png", title=heatmap_title(name, rule))
            self.client.log_artifacts(self.run_id, tmp, f"rules/{key}")
        if self.register and path is not None and prov.get("method") not in (None, "classic"):
            self.registered.append(self._register(rule, f"rules/{key}"))

    def _register(self, rule, artifact_path: str) -> tuple[str, str]:
        name = registered_name(rule)
        try:
            self.client.create_registered_model(name)
        except MlflowException:
            pass  # already registered
        run = self.client.get_run(self.run_id)
        mv = self.client.create_model_version(name, f"{run.info.artifact_uri}/{artifact_path}",
                                              run_id=self.run_id,
                                              tags={"method": str(rule.provenance.get("method"))})
        self.client.set_tag(self.run_id, f"registered.{name}", mv.version)
        print(f"registered rule models:/{name}/{mv.version}", file=sys.stderr)
        return name, mv.version

    def artifact(self, path: Path, subdir: str | None = None) -> None:
        self.start()
        self.client.log_artifact(self.run_id, str(path), subdir)

    def _result_metrics(self) -> None:
        """The scalar numbers of the run's result.json as ``<command>/<key>`` metrics."""
        f = None if self.out is None else Path(self.out) / "result.json"
        if f is None or not f.is_file():
            return
        try:
            result = json.loads(f.read_text())
        except (OSError, ValueError):
            return
        family = self.tags.get("plasticity.command", self.run_name)
        self.metrics({f"{family}/{k}": v for k, v in result.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)}, self._step)

    def close(self, status: str = "FINISHED") -> None:
        """Flush, attach the run's result files, and end the run with ``status``."""
        if self.closed:
            return
        self.closed = True
        if not self._started and status != "FINISHED":
            return  # failed before producing anything: leave no half-written run (a resumed
            # run that was refused stays as the kill left it, for the next --resume)
        self._result_metrics()
        self._flush_metrics()
        self._flush_params()
        if self.tags:
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self.tags.items()])
        if self.out is not None:
            for f in ("result.json", "events.jsonl", "report.md", "history.json"):
                if (Path(self.out) / f).is_file():
                    self.client.log_artifact(self.run_id, str(Path(self.out) / f))
        self.client.set_terminated(self.run_id, status)


class GuardedSink(Sink):
    """A command's MLflow observer that never costs the command its results: a tracking failure
    the retries did not cure (the store gone for longer than ``$PLASTICITY_TRACKING_RETRY_S``, a
    refused request, a broken store) is one warning line, the command goes on untracked and
    writes its output folder and result.json, and at the end one line says how to log that
    folder later (``plasticity log OUT``)."""

    def __init__(self, sink: MlflowSink, uri: str, out: Path):
        self.inner, self.uri, self.out, self.failed = sink, uri, Path(out), None

    @property
    def run_id(self):
        return self.inner.run_id

    def _do(self, what: str, *args) -> None:
        if self.failed is not None:
            return
        try:
            getattr(self.inner, what)(*args)
        except Exception as exc:  # noqa: BLE001 - a tracking failure never ends the command
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.failed = msg[:200]
            print(f"plasticity: warning: tracking to {self.uri} failed ({what}: {self.failed}); "
                  "the run goes on untracked", file=sys.stderr)

    def params(self, params):
        self._do("params", params)

    def metrics(self, metrics, step=None):
        self._do("metrics", metrics, step)

    def rule(self, name, rule, path=None):
        self._do("rule", name, rule, path)

    def artifact(self, path, subdir=None):
        self._do("artifact", path, subdir)

    def rewind(self, step, history=(), prefix=""):
        self._do("rewind", step, history, prefix)

    def close(self, status="FINISHED"):
        self._do("close", status)
        if self.failed is not None and (self.out / "events.jsonl").is_file():
            print(f"plasticity: warning: this run is not (fully) in {self.uri}; its output is in "
                  f"{self.out}: log it later with `plasticity log {self.out} --tracking-uri "
                  f"{self.uri}`", file=sys.stderr)


STATE = "tracking.json"  # in a command's output folder: its run's key and id


def sink_for_command(uri: str | None, command: str, cfg_tags: dict, out: Path,
                     resume: bool = False) -> GuardedSink | None:
    """The CLI's observer for one command run (``uri`` already resolved; None = off). The run's
    key is written to ``<out>/tracking.json`` when the run is made; ``resume``: the run of that
    key (the killed one) is continued, RUNNING again and FINISHED at the end, not a new run."""
    if uri is None:
        return None
    out = Path(out).resolve()
    sink = open_store(uri).sink(command, tags={"plasticity.command": command,
                                               "plasticity.out": str(out), **cfg_tags}, out=out)
    sink.state_file = out / STATE
    if resume and sink.state_file.is_file():
        try:
            state = json.loads(sink.state_file.read_text())
            sink.run_key = str(state["run_key"])
        except (OSError, ValueError, KeyError, TypeError):
            state = None
        if state is not None:
            run = sink.find_run()
            if run is not None:
                sink.run_id, sink.reopen_on_start = run.info.run_id, True
    return GuardedSink(sink, uri, out)


_REF = re.compile(r"^models:/([^/]+)/([^/]+)$")


def fetch_rule(ref: str, uri: str | None):
    """A registered rule from ``models:/NAME/VERSION`` (VERSION a number or ``latest``)."""
    from .rules.io import load_rule

    m = _REF.match(ref)
    if m is None:
        raise PlasticityError(f"rule reference '{ref}' is not models:/NAME/VERSION")
    if uri is None:
        raise PlasticityError(f"rule '{ref}' needs tracking: pass --tracking-uri, not none")
    name, version = m.groups()
    client = open_store(uri).client
    try:
        if version == "latest":
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise MlflowException("no versions")
            version = str(max(int(v.version) for v in versions))
        mv = client.get_model_version(name, version)
    except MlflowException:
        raise PlasticityError(f"registered rule '{name}' version {version} not found in {uri}") from None
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=tmp,
                                                    tracking_uri=uri)
        rule = load_rule(Path(local) / "rule.json")
    return rule
