// A TCP proxy in front of pgspout that drops a connection mid-body on demand, for the clients' resume tests
// (tests/clients/client_test.mjs under Node, tests/browser/browser_test.mjs in Chromium).
import net from "node:net";

/**
 * A TCP proxy in front of pgspout. `cutNext(bytes)` arms it: the next request for rows gets `bytes` of its
 * response through, then the connection drops mid-body. It records every rows request's headers.
 */
export async function cuttingProxy(base) {
  const target = new URL(base);
  const state = { armed: 0, cuts: 0, requests: [] };
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    let budget = null;
    client.on("data", (data) => {
      const text = data.toString("latin1");
      if (/^GET \/v1\/datasets\/[^ ]*\/rows/.test(text)) {
        const [head] = text.split("\r\n\r\n");
        const [line, ...fields] = head.split("\r\n");
        state.requests.push({
          line,
          headers: Object.fromEntries(fields.map((f) => [f.slice(0, f.indexOf(":")).toLowerCase(), f.slice(f.indexOf(":") + 1).trim()])),
        });
        if (state.armed) {
          budget = state.armed;
          state.armed = 0;
        }
      }
      upstream.write(data);
    });
    upstream.on("data", (data) => {
      if (budget === null) return void client.write(data);
      if (data.length < budget) {
        budget -= data.length;
        return void client.write(data);
      }
      state.cuts += 1;
      client.end(data.subarray(0, budget), () => client.destroy());
      upstream.destroy();
      budget = null;
    });
    upstream.on("end", () => client.end());
    upstream.on("error", () => client.destroy());
    client.on("error", () => upstream.destroy());
    client.on("close", () => upstream.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    state,
    cutNext(bytes) {
      state.armed = bytes;
    },
    close: () => server.close(),
  };
}
