// Plain-text rendering of a results object (run.mjs writes the same object as JSON).

const f = (x, d = 1) => (x === null || x === undefined || !Number.isFinite(Number(x)) ? '–' : Number(x).toFixed(d));
const pct = (x) => (x === null || x === undefined ? '–' : `${f(x)}%`);

export function table(headers, rows) {
  const cells = [headers, ...rows].map((r) => r.map((c) => String(c ?? '–')));
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  const line = (r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd();
  return [line(cells[0]), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.slice(1).map(line)].join('\n');
}

const NAMES = { porthole: 'Porthole', novnc: 'x11vnc+noVNC', selkies: 'Selkies' };

export function formatReport(r) {
  const out = [];
  const load = (l) => (l ? l.map((x) => x.toFixed(2)).join(' ') : '?');
  out.push(`Porthole benchmarks  ${r.started_at}${r.quick ? '  (--quick)' : ''}${r.only ? `  (--only ${r.only})` : ''}`);
  out.push(`host: ${r.host.cpus} cores (${r.host.cpu_model || '?'}), load ${load(r.host.load_before)} -> ${load(r.host.load_after)}; took ${r.seconds} s`);
  out.push('Shared machine: read medians and ratios, not absolute numbers.');
  if (r.agent_bin) out.push(`agent binary: ${r.agent_bin}${/\/debug\//.test(r.agent_bin) ? ' (a DEBUG build: unoptimised Rust, CPU figures are pessimistic; set PORTHOLE_AGENT_BIN to a release build)' : ''}`);

  if (r.live) {
    const stacks = r.live.stacks;
    const p = stacks.find((s) => s.name === 'porthole');
    if (p?.info?.version) out.push(`agent: porthole-agent ${p.info.version}`);
    out.push('');
    out.push(`1. Input -> photon, 1280x800 (ms; pointer move -> first displayed frame with the new colour, ` +
      `in the viewer's clock; ${r.opts.samples} samples, first ${r.opts.discard} discarded)`);
    const rows = [];
    for (const s of stacks) {
      if (!s.ok) { rows.push([NAMES[s.name], 'NOT MEASURED', '', '', '', '', '', '']); continue; }
      for (const [k, l] of Object.entries(s.latency)) {
        rows.push([NAMES[s.name], k === 'x' ? 'X: xdotool mousemove' : 'data channel pointer', f(l.p50), f(l.p95),
          f(l.inject_p50), f(l.recv_p50), `${l.n}`, `${l.timeouts}`]);
      }
    }
    out.push(table(['stack', 'input', 'p50', 'p95', 'injected p50', 'received p50', 'n', 'timeouts'], rows));
    out.push('   injected: the /move request had answered (HTTP + xdotool), included in p50/p95, the same path for every stack.');
    out.push('   received: last RTP packet of the changed frame arrived (RTC receiveTime, video viewers); the rest is decode + present.');

    out.push('');
    out.push(`2. Busy screen (page repaints every frame at 60 fps) and server CPU (% of one core, ${r.opts.windowS} s windows)`);
    const rows2 = stacks.filter((s) => s.ok).map((s) => [
      NAMES[s.name], f(s.busy.page_fps), f(s.busy.shown_fps), s.busy.framesPerSecond_p50 != null ? f(s.busy.framesPerSecond_p50) : '–',
      f(s.busy.kbit_s, 0), pct(s.cpu.busy.cpuPercent), pct(s.cpu.still.cpuPercent), pct(s.cpu.noViewer.cpuPercent),
    ]);
    out.push(table(['stack', 'page fps', 'shown fps', 'fps (stats)', 'kbit/s', 'CPU busy', 'CPU still+viewer', 'CPU no viewer'], rows2));
    out.push('   page fps: frames the colour page itself rendered on the display (it cannot always keep 60 on 2 shared cores).');
    out.push('   shown fps: frames presented in the viewer (requestVideoFrameCallback; noVNC: canvas colour changes per rAF).');
    out.push('   fps (stats): WebRTC inbound framesPerSecond (Porthole only). kbit/s: Porthole bytesReceived; peers: TCP bytes acked by the server socket.');
    out.push('   Porthole is capped at 30 fps (the agent default); Selkies runs its own default rate.');
    if (p?.ok && p.busy.received_fps != null) {
      out.push(`   Porthole viewer: received ${f(p.busy.received_fps)} fps, decoded ${f(p.busy.decoded_fps)} fps, dropped ${p.busy.frames_dropped} frames, ` +
        `lost ${p.busy.packets_lost} packets, jitter buffer ${f(p.busy.jitter_buffer_ms)} ms.`);
    }
    const sel = stacks.find((s) => s.name === 'selkies');
    if (sel?.ok && sel.info?.stream) out.push(`   Selkies stream: ${sel.info.stream}`);

    out.push('');
    out.push('3. Ratios Porthole / peer (X-side probe; below 1 = Porthole lower)');
    const rows3 = Object.entries(r.live.ratios || {}).map(([peer, q]) => [
      NAMES[peer], f(q.latency_p50, 2), f(q.latency_p95, 2), f(q.cpu_busy, 2), f(q.cpu_still, 2), f(q.cpu_no_viewer, 2),
    ]);
    out.push(rows3.length ? table(['peer', 'latency p50', 'latency p95', 'CPU busy', 'CPU still', 'CPU no viewer'], rows3) : '   (no peer measured)');

    out.push('');
    out.push('4. Encode cost, busy page (cpu-ms per frame: capture + convert + encode)');
    const rows4 = r.live.encode.map((e) => [
      e.size,
      f(e.agent?.encode_ms_p50, 2), f(e.agent?.pipeline_threads_cpu_ms_per_frame, 2), f(e.agent?.process_cpu_ms_per_frame, 2),
      f(e.agent?.fps_mean), f(e.x264?.cpu_ms_per_frame, 2), f(e.x264?.fps),
      f(e.ratio_pipeline_vs_x264, 2), f(e.ratio_threads_vs_x264, 2), f(e.ratio_process_vs_x264, 2),
    ]);
    out.push(table(['size', 'stats encode_ms_p50', 'pipeline threads', 'agent process', 'agent fps', 'bare x264', 'x264 fps',
      'stats/x264', 'threads/x264', 'process/x264'], rows4));
    out.push('   stats encode_ms_p50: median of the agent\'s own `stats` figure (CPU of the pipeline thread per frame).');
    out.push('   agent fps: frames the agent encoded per second, counted as received by the viewer (framesReceived).');
    out.push('   pipeline threads: CPU of every agent thread named pipeline-* (the pipeline thread and the x264 slice');
    out.push('   threads it starts) / agent fps. agent process: whole process CPU / agent fps (adds WebRTC, SRTP, HTTP).');
    out.push('   bare x264: ffmpeg -f x11grab -framerate 30 -> libx264 -pix_fmt yuv420p ultrafast/zerolatency/baseline,');
    out.push('   (user+sys CPU of the whole ffmpeg) / frames encoded.');
    const pf = r.live.encode.map((e) => `${e.size}: page ${f(e.agent?.page_fps)} fps with the agent, ${f(e.x264?.page_fps)} fps with ffmpeg`).join('; ');
    out.push(`   busy page rate during these windows: ${pf}`);
  }

  if (r.computer) {
    const c = r.computer;
    out.push('');
    out.push(`5. Computer use, 1280x800 (ms, client side; ${r.opts.actions} actions, ${r.opts.shots} screenshots)`);
    if (!c.ok) out.push(`   NOT MEASURED: ${c.error}`);
    else {
      const row = (name, s, extra = '') => [name, f(s.p50), f(s.p95), extra];
      out.push(table(['what', 'p50', 'p95', 'note'], [
        row('Porthole POST /v1/computer left_click', c.porthole_click),
        row('Porthole left_click, recording on', c.porthole_click_recording, 'grabs a before-thumbnail'),
        row('reference: xdotool mousemove X Y click 1', c.reference_click, 'a subprocess per action'),
        row('Porthole {"action":"screenshot"}', c.porthole_screenshot_action, `waits for 80 ms without damage; ${c.porthole_screenshot_action.png_bytes} B PNG`),
        row('Porthole GET /v1/screenshot', c.porthole_get_screenshot, `${c.porthole_get_screenshot.png_bytes} B`),
        row('Porthole GET /v1/screenshot?settle=0', c.porthole_get_screenshot_nosettle, 'no settle wait'),
        row(`reference: ${c.reference_screenshot.command.startsWith('import') ? 'import -window root png:-' : 'ffmpeg x11grab 1 frame -> PNG'}`, c.reference_screenshot, `${c.reference_screenshot.png_bytes} B`),
      ]));
      out.push(`   The reference also waits a fixed ${c.reference_wait_ms} ms before every screenshot: grab + wait p50 = ${f(c.reference_screenshot_with_wait_p50)} ms.`);
      out.push(`   Ratios Porthole / reference (p50): click ${f(c.ratios.click_p50, 2)}, screenshot vs grab ${f(c.ratios.screenshot_action_vs_grab_p50, 2)}, ` +
        `screenshot vs grab + ${c.reference_wait_ms} ms wait ${f(c.ratios.screenshot_action_vs_grab_plus_wait_p50, 3)}`);
    }
  }

  out.push('');
  if (r.not_measured.length) {
    out.push('Not measured / caveats:');
    for (const m of r.not_measured) out.push(`- ${m.replace(/\n/g, '\n  ')}`);
  } else {
    out.push('Everything requested was measured.');
  }
  return out.join('\n');
}
