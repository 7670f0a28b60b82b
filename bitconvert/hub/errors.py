"""What ``huggingface_hub`` raises, turned into one token-free line (:class:`HubError`, exit 1)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from ..errors import BitconvertError
from ..secrets import one_line, scrub_secrets


class HubError(BitconvertError):
    """The Hub refused or could not be reached. Exit code 1; the message is one line, token-free."""



def transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = []
    try:
        from huggingface_hub.errors import OfflineModeIsEnabled

        errors.append(OfflineModeIsEnabled)
    except ImportError:  # pragma: no cover - older clients
        pass
    try:
        import httpx2

        errors.append(httpx2.TransportError)
    except ImportError:  # pragma: no cover - clients built on httpx or requests
        pass
    return tuple(errors)



@contextmanager
def hub_errors(where: str, action: str) -> Iterator[None]:
    """Turn what ``huggingface_hub`` raises into one token-free line (HubError, exit 1)."""
    try:
        yield
    except BitconvertError:
        raise
    except Exception as exc:
        # The cause still shows under --debug: take any echoed secret out of it too.
        exc.args = tuple(scrub_secrets(a) if isinstance(a, str) else a for a in exc.args)
        raise HubError(f"{where}: {_explain(exc, action)}") from exc


def _explain(exc: Exception, action: str) -> str:
    from huggingface_hub import errors as e

    if isinstance(exc, e.HfHubHTTPError) and getattr(exc, "response", None) is not None:
        status = exc.response.status_code
        server = one_line(getattr(exc, "server_message", None) or "")
        said = f" (Hub: {server})" if server else ""
        if status == 412:
            return (
                "the branch moved while uploading (another commit landed after this upload started); "
                f"nothing was committed, run the upload again{said}"
            )
        if isinstance(exc, e.RevisionNotFoundError):
            return f"no such revision{said}"
        if isinstance(exc, e.RepositoryNotFoundError) or status == 404:
            return f"repository not found, or not visible with the current token{said}"
        if status in (401, 403):
            return f"the Hub refused access (HTTP {status}); set HF_TOKEN to a token with write access{said}"
        return f"the Hub answered HTTP {status} to {action}{said}"
    if isinstance(exc, transport_errors()):
        if "Offline" in type(exc).__name__:
            return f"cannot {action}: offline mode is on (HF_HUB_OFFLINE)"
        return f"cannot reach the Hub to {action}: {one_line(exc) or type(exc).__name__}"
    if isinstance(exc, e.LocalEntryNotFoundError):
        return f"not available offline: {one_line(exc)}"
    return f"{action} failed: {type(exc).__name__}: {one_line(exc)}"

