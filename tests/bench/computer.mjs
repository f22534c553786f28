// Computer-use benchmarks at 1280x800: the agent's action round trip and screenshot latency,
// side by side with the reference approach (a subprocess per action: `xdotool`, and a full
// screen grab + PNG with ImageMagick `import` or ffmpeg), in the same run on the same display.

import path from 'node:path';
import { execFile } from 'node:child_process';
import { startAgent } from '../e2e/harness.mjs';
import { sleep, which, summary, run, round, startAgentRecording } from './lib.mjs';
import { startScene } from './live.mjs';

/** The reference implementation sleeps this long before every screenshot (design.md part C). */
export const REFERENCE_WAIT_MS = 2000;

async function timeIt(n, warmup, fn) {
  const ms = [];
  let last;
  for (let i = 0; i < n + warmup; i++) {
    const t0 = performance.now();
    last = await fn(i);
    const dt = performance.now() - t0;
    if (i >= warmup) ms.push(dt);
    await sleep(20); // let the display settle a little; the same for both sides
  }
  return { ...summary(ms), last };
}

function execTimed(cmd, args, env, { binary = false } = {}) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env: { ...process.env, ...env }, encoding: binary ? 'buffer' : 'utf8', maxBuffer: 64 << 20, timeout: 30000 },
      (err, stdout) => (err ? reject(err) : resolve(stdout)));
  });
}

/** `import` from ImageMagick when it is really installed (not a stand-in script). */
async function realImport() {
  const p = which('import');
  if (!p) return null;
  const v = await run(p, ['-version']).then((r) => r.stdout).catch(() => '');
  return /ImageMagick/.test(v) ? p : null;
}

export async function benchComputer(bench, work, opts, log) {
  const W = 1280, H = 800;
  const res = { display: `${W}x${H}`, n_actions: opts.actions, n_shots: opts.shots };
  const scene = await startScene(W, H, bench, work, log);
  const env = { DISPLAY: scene.display };
  const points = [[300, 300], [340, 300]];
  let agent;
  try {
    // --- Porthole, recording off (the e2e harness's default) ---
    agent = await startAgent({ display: scene.display });
    const api = (p, init = {}) => fetch(`${agent.url}${p}`, { ...init, headers: { ...agent.auth(), ...(init.headers || {}) } });
    const post = async (body) => {
      const r = await api('/v1/computer', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      const j = await r.json();
      if (r.status !== 200) throw new Error(`POST /v1/computer ${JSON.stringify(body)}: HTTP ${r.status} ${JSON.stringify(j)}`);
      return j;
    };
    log('  [computer] porthole left_click');
    const click = await timeIt(opts.actions, 5, (i) => post({ action: 'left_click', coordinate: points[i % 2] }));
    res.porthole_click = { ...click, last: undefined };
    log(`  [computer] porthole left_click p50 ${click.p50} ms p95 ${click.p95} ms`);

    const shotAction = await timeIt(opts.shots, 3, async () => (await post({ action: 'screenshot' })).base64_image.length);
    res.porthole_screenshot_action = { ...shotAction, last: undefined, png_bytes: Math.round((shotAction.last * 3) / 4) };
    log(`  [computer] porthole {"action":"screenshot"} p50 ${shotAction.p50} ms`);

    const getShot = (q) => timeIt(opts.shots, 3, async () => {
      const r = await api(`/v1/screenshot${q}`);
      if (r.status !== 200) throw new Error(`GET /v1/screenshot${q}: HTTP ${r.status}`);
      return (await r.arrayBuffer()).byteLength;
    });
    const g = await getShot('');
    res.porthole_get_screenshot = { ...g, last: undefined, png_bytes: g.last };
    const g0 = await getShot('?settle=0');
    res.porthole_get_screenshot_nosettle = { ...g0, last: undefined, png_bytes: g0.last };
    log(`  [computer] porthole GET /v1/screenshot p50 ${g.p50} ms, ?settle=0 p50 ${g0.p50} ms`);
    await agent.stop();
    agent = null;

    // --- Porthole with recording on (the agent's default outside tests): the action also
    // grabs a 'before' thumbnail for the timeline, so the round trip is longer ---
    {
      agent = await startAgentRecording(scene.display);
      const api2 = (p, init = {}) => fetch(`${agent.url}${p}`, { ...init, headers: { ...agent.auth(), ...(init.headers || {}) } });
      const clickRec = await timeIt(opts.actions, 5, async (i) => {
        const r = await api2('/v1/computer', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ action: 'left_click', coordinate: points[i % 2] }) });
        await r.json();
        if (r.status !== 200) throw new Error(`HTTP ${r.status}`);
      });
      res.porthole_click_recording = { ...clickRec, last: undefined };
      log(`  [computer] porthole left_click with recording on p50 ${clickRec.p50} ms`);
      await agent.stop();
      agent = null;
    }

    // --- Reference: a subprocess per action ---
    log('  [computer] reference xdotool');
    const xd = await timeIt(opts.actions, 5, (i) => execTimed('xdotool', ['mousemove', String(points[i % 2][0]), String(points[i % 2][1]), 'click', '1'], env));
    res.reference_click = { ...xd, last: undefined, command: 'xdotool mousemove X Y click 1' };
    log(`  [computer] reference xdotool click p50 ${xd.p50} ms`);

    const imp = await realImport();
    let grab;
    if (imp) {
      grab = { command: 'import -window root png:-', run: () => execTimed(imp, ['-window', 'root', 'png:-'], env, { binary: true }) };
    } else {
      const args = ['-hide_banner', '-nostdin', '-loglevel', 'error', '-f', 'x11grab', '-video_size', `${W}x${H}`, '-i', scene.display,
        '-frames:v', '1', '-f', 'image2', '-c:v', 'png', '-'];
      grab = {
        command: `ffmpeg ${args.join(' ')}`,
        note: 'ImageMagick `import` is not installed (a stand-in `convert` is not ImageMagick); used ffmpeg x11grab instead',
        run: () => execTimed('ffmpeg', args, env, { binary: true }),
      };
    }
    log(`  [computer] reference grab: ${grab.command}`);
    const rs = await timeIt(opts.shots, 3, async () => (await grab.run()).length);
    res.reference_screenshot = { ...rs, last: undefined, png_bytes: rs.last, command: grab.command, note: grab.note };
    res.reference_wait_ms = REFERENCE_WAIT_MS;
    res.reference_screenshot_with_wait_p50 = round(rs.p50 + REFERENCE_WAIT_MS);
    log(`  [computer] reference grab p50 ${rs.p50} ms (+ ${REFERENCE_WAIT_MS} ms fixed wait)`);
    res.ok = true;
  } catch (e) {
    res.ok = false;
    res.error = String(e && e.message ? e.message : e).split('\n').slice(0, 12).join('\n');
    log(`  [computer] FAILED: ${res.error}`);
  } finally {
    if (agent) await agent.stop().catch(() => {});
    await scene.stop();
  }
  return res;
}
