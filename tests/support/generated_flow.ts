// What a user of the TypeScript client that @hey-api/openapi-ts generates from /openapi.json does:
// the API's own 401, 404 and 422 answers, then a small FC job submitted, polled to its end, its
// 409 (cancel of an ended job), its checkpoint and its ONNX model. Type-checked with tsc against the
// generated types before it runs, so a Problem read as another shape fails here. Each step prints
// one JSON line: what the generated functions returned, for tests/integration/test_generated_clients.py.
//
// Usage: tsx generated_flow.ts BASE_URL TOKEN
import { createHash } from 'node:crypto';
import { createClient, createConfig } from './generated/client';
import { cancelJob, downloadCheckpoint, downloadModel, getJob, listJobs, submitJob } from './generated/sdk.gen';
import type { JobRead, Problem } from './generated/types.gen';

const [baseUrl, token] = process.argv.slice(2);
const authed = createClient(createConfig({ baseUrl, auth: token }));
const anonymous = createClient(createConfig({ baseUrl }));
const MISSING = '00000000-0000-0000-0000-000000000001';
const FINAL = new Set(['succeeded', 'failed', 'cancelled']);

function print(step: string, record: object): void {
  console.log(JSON.stringify({ step, ...record }));
}

function problem(step: string, status: number, error: Problem | undefined): void {
  print(step, { http_status: status, problem: error ?? null, is_problem: typeof error?.title === 'string' });
}

async function bytes(data: Blob | File | undefined): Promise<{ size: number; sha256: string; first: number }> {
  const buffer = Buffer.from(await (data as Blob).arrayBuffer());
  return { size: buffer.length, sha256: createHash('sha256').update(buffer).digest('hex'), first: buffer[0] };
}

async function main(): Promise<void> {
  const unauthorized = await listJobs({ client: anonymous });
  problem('401', (unauthorized.response?.status ?? 0), unauthorized.error);

  const missing = await getJob({ client: authed, path: { job_id: MISSING } });
  problem('404', (missing.response?.status ?? 0), missing.error);

  const invalid = await submitJob({ client: authed, body: { architecture: 'fc', epochs: 0 } });
  problem('422', (invalid.response?.status ?? 0), invalid.error);

  const submitted = await submitJob({ client: authed, body: { architecture: 'fc', epochs: 1 } });
  const created: JobRead | undefined = submitted.data;
  print('submit', { http_status: (submitted.response?.status ?? 0), id: created?.id, status: created?.status });
  if (created === undefined) throw new Error('submit_job returned no job');

  let job: JobRead = created;
  const deadline = Date.now() + 300_000; // a hang guard, not a bound
  while (!FINAL.has(job.status) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    const polled = await getJob({ client: authed, path: { job_id: created.id } });
    if (polled.data === undefined) throw new Error(`get_job answered ${(polled.response?.status ?? 0)}`);
    job = polled.data;
  }
  const checkpoints = job.result?.checkpoints ?? [];
  print('poll', {
    status: job.status,
    test_accuracy: job.result?.test_accuracy ?? null,
    checkpoint_sha256: checkpoints.length ? checkpoints[checkpoints.length - 1].sha256 : null,
  });

  const conflict = await cancelJob({ client: authed, path: { job_id: created.id } });
  problem('409', (conflict.response?.status ?? 0), conflict.error);

  const checkpoint = await downloadCheckpoint({ client: authed, path: { job_id: created.id } });
  print('checkpoint', { http_status: (checkpoint.response?.status ?? 0), ...(await bytes(checkpoint.data)) });

  const model = await downloadModel({ client: authed, path: { job_id: created.id }, query: { format: 'onnx' } });
  print('model', { http_status: (model.response?.status ?? 0), ...(await bytes(model.data as Blob | undefined)) });
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
