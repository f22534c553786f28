// ICE failure diagnosis: an agent that advertises an address viewers cannot reach (a TEST-NET
// --public-ip with one --udp-port, as a misconfigured cloud VM would) makes the viewer's
// connection fail, and the viewer page then shows the agent's diagnosis naming that address
// and port and the fix (the same text is the `stream` failed event on the timeline).

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
  startXvfb, startAgent, launchChromium, openViewer, waitFor, tmpDir, freePort,
} from './harness.mjs';

describe('ICE failure diagnosis', { timeout: 5 * 60 * 1000 }, () => {
  it('an unreachable --public-ip/--udp-port: the viewer fails and shows what to open', async (t) => {
    const dir = tmpDir('porthole-e2e-ice-');
    const xvfb = await startXvfb({ log: path.join(dir, 'xvfb.log') });
    const udp = await freePort();
    const agent = await startAgent({ display: xvfb.display, args: ['--public-ip', '192.0.2.123', '--udp-port', String(udp)] });
    const browser = await launchChromium();
    try {
      const page = await openViewer(browser, agent, { wait: false });
      let st;
      await waitFor(async () => {
        st = await page.evaluate(() => ({ state: window.porthole.state, err: window.porthole.lastError }));
        return st.state === 'failed' && /UDP 192\.0\.2\.123/.test(st.err?.message || '');
      }, { timeout: 120000, interval: 500, message: 'the viewer to fail with the diagnosis' })
        .catch((e) => { throw new Error(`${e.message}; last ${JSON.stringify(st)}\n${agent.logTail(20)}`); });
      t.diagnostic(st.err.message);
      assert.equal(st.err.code, 'ice_failed');
      assert.match(st.err.message, new RegExp(`allow inbound UDP ${udp}`));
      const r = await fetch(`${agent.url}/v1/events?after=0`, { headers: agent.auth() });
      const evs = (await r.json()).events;
      const failed = evs.find((e) => e.kind === 'stream' && e.data?.state === 'failed');
      assert.ok(failed, `no stream failed event: ${JSON.stringify(evs.map((e) => [e.kind, e.data?.state]))}`);
      assert.equal(failed.data.diagnosis, st.err.message.replace('The connection to the agent failed: ', ''));
    } finally {
      await browser.close().catch(() => {});
      await agent.stop();
      await xvfb.stop();
    }
  });
});
