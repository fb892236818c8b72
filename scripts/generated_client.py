"""Upload → quantize → download through a client generated from openapi.yaml.

Run by scripts/generated_client.sh: argv = base URL, a float safetensors file. Uses only the
generated package (`modelpress_client`): typed job submission (CreateQuantizeJob with
QuantizeParams), the binary upload body, the binary download.
"""

import sys
import time

from modelpress_client import AuthenticatedClient
from modelpress_client.api.jobs import create_job, get_job
from modelpress_client.api.models import create_model, download_model, get_model
from modelpress_client.models import (
    CreateQuantizeJob,
    CreateQuantizeJobKind,
    Job,
    JobStatus,
    Model,
    QuantizeParams,
)
from modelpress_client.types import File


def main() -> None:
    base, path = sys.argv[1], sys.argv[2]
    # Open mode: the server ignores the key; the client type is the one every /v1 call takes.
    client = AuthenticatedClient(base_url=base, token="unused-in-open-mode", raise_on_unexpected_status=True)
    data = open(path, "rb").read()

    r = create_model.sync_detailed(client=client, body=File(payload=data, file_name="m.safetensors"), name="teacher")
    assert r.status_code == 201 and isinstance(r.parsed, Model), (r.status_code, r.content[:500])
    model = r.parsed
    assert model.size_bytes == len(data), model

    body = CreateQuantizeJob(
        kind=CreateQuantizeJobKind.QUANTIZE,
        model_id=model.id,
        params=QuantizeParams(scheme="int8", min_elements=0),
    )
    r = create_job.sync_detailed(client=client, body=body)
    assert r.status_code == 202 and isinstance(r.parsed, Job), (r.status_code, r.content[:500])
    job = r.parsed
    assert job.status == JobStatus.QUEUED, job.status

    deadline = time.monotonic() + 120
    while job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        assert time.monotonic() < deadline, "the job did not finish in 120 s"
        time.sleep(0.2)
        job = get_job.sync(job.id, client=client)
    assert job.status == JobStatus.SUCCEEDED, (job.status, job.error)
    out_id = job.output_model_id
    out = get_model.sync(out_id, client=client)
    assert isinstance(out, Model) and out.parent_model_id == model.id, out

    r = download_model.sync_detailed(out_id, client=client)
    assert r.status_code == 200, (r.status_code, r.content[:500])
    got = r.parsed.payload.read() if isinstance(r.parsed, File) else r.content
    assert len(got) == out.size_bytes, (len(got), out.size_bytes)
    assert len(got) < len(data), "int8 is smaller than f32"
    print(f"uploaded {len(data)} B, quantized to int8 ({len(got)} B) via the generated client")

    # A typed refusal comes back as the contract's Problem.
    bad = CreateQuantizeJob(kind=CreateQuantizeJobKind.QUANTIZE, model_id=model.id, params=QuantizeParams(scheme="int3"))
    r = create_job.sync_detailed(client=client, body=bad)
    assert r.status_code == 422 and r.parsed.field == "params.scheme", (r.status_code, r.content[:500])


if __name__ == "__main__":
    main()
