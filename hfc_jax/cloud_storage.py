"""A preflight check of a `gs://` workdir: seconds and one line, not minutes of retries.

Without it, a workdir in a bucket that does not exist, on a machine with no route to
Cloud Storage or with no credentials, failed only after gcsfs and TensorStore had
retried for about two minutes, printing tracebacks and, without credentials, one
warning per request. `check_bucket` asks once, with a short timeout, for the bucket's
metadata (`GET /storage/v1/b/<bucket>`, the JSON API both clients use) with the
credentials the run would use, and turns every way that fails into one HfcError line
that says what is missing:

- no credentials: Application Default Credentials (`gcloud auth application-default
  login`, `GOOGLE_APPLICATION_CREDENTIALS`, or a VM's service account) found none;
- no answer within `TIMEOUT_S` (no network, a firewall) or the connection refused;
- the bucket does not exist (404), or the credentials may not use it (401/403).

`STORAGE_EMULATOR_HOST` (a local emulator, as the tests use) is honoured as gcsfs
honours it: that endpoint, no credentials.
"""

import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request

from hfc_jax import errors

ENDPOINT = "https://storage.googleapis.com"
TIMEOUT_S = 10.0     # the whole check: credentials and the request
LOGIN = ("run `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS "
         "to a service-account key file, or run on a VM whose service account has access")


def bucket_of(url: str) -> str:
  """'b' for 'gs://b/some/run'."""
  return urllib.parse.urlparse(url).netloc


def endpoint() -> tuple[str, bool]:
  """(the JSON API's base URL, whether it is an emulator that needs no credentials)."""
  emulator = os.environ.get("STORAGE_EMULATOR_HOST")
  if emulator:
    return (emulator if "://" in emulator else f"http://{emulator}").rstrip("/"), True
  return ENDPOINT, False


def _token(field: str, url: str) -> str:
  """An OAuth access token from Application Default Credentials, or HfcError."""
  try:
    import google.auth  # pylint: disable=g-import-not-at-top
    import google.auth.transport.requests  # pylint: disable=g-import-not-at-top
    credentials, _ = google.auth.default(
        scopes=["https://www.googleapis.com/auth/devstorage.read_write"])
    credentials.refresh(google.auth.transport.requests.Request())
  except Exception as e:  # pylint: disable=broad-except  (DefaultCredentialsError, RefreshError, ...)
    why = ("none found" if type(e).__name__ == "DefaultCredentialsError" else
           f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}")
    raise errors.HfcError(
        f"{field}={url!r}: no usable Google Cloud credentials ({why}); {LOGIN}.") from None
  return credentials.token


def _probe(field: str, url: str) -> None:
  """The check itself (no deadline of its own); raises HfcError."""
  base, emulated = endpoint()
  bucket = bucket_of(url)
  headers = {} if emulated else {"Authorization": f"Bearer {_token(field, url)}"}
  request = urllib.request.Request(
      f"{base}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}", headers=headers)
  try:
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
      json.load(response)
  except urllib.error.HTTPError as e:
    if e.code == 404:
      raise errors.HfcError(f"{field}={url!r}: the bucket gs://{bucket} does not exist "
                            "(create it with `gcloud storage buckets create`, or fix the "
                            "name).") from None
    if e.code in (401, 403):
      raise errors.HfcError(f"{field}={url!r}: the credentials in use may not read the "
                            f"bucket gs://{bucket} (HTTP {e.code}); grant them access "
                            f"or {LOGIN}.") from None
    raise errors.HfcError(f"{field}={url!r}: Cloud Storage at {base} answered HTTP "
                          f"{e.code} for the bucket gs://{bucket}.") from None
  except (urllib.error.URLError, OSError) as e:
    reason = getattr(e, "reason", e)
    raise errors.HfcError(f"{field}={url!r}: cannot reach Cloud Storage at {base} "
                          f"({reason}); check the network (or STORAGE_EMULATOR_HOST).") from None


def check_bucket(field: str, url: str, timeout_s: float = TIMEOUT_S + 2) -> None:
  """Raises a one-line HfcError within `timeout_s` unless the bucket of `url` (a
  `gs://` path) exists and answers with the credentials the run would use."""
  outcome: list[BaseException | None] = []

  def run():
    try:
      _probe(field, url)
      outcome.append(None)
    except BaseException as e:  # pylint: disable=broad-except  (handed to the caller)
      outcome.append(e)

  thread = threading.Thread(target=run, daemon=True, name="gcs-preflight")
  thread.start()
  thread.join(timeout_s)
  if not outcome:
    base, _ = endpoint()
    raise errors.HfcError(f"{field}={url!r}: no answer from Cloud Storage at {base} "
                          f"within {timeout_s:.0f} s; check the network (or "
                          "STORAGE_EMULATOR_HOST).")
  if outcome[0] is not None:
    raise outcome[0]
