// A small rhea (Node.js AMQP 1.0 client, Apache-2.0) client driven by tests/amqp_clients.rs:
// node rhea_client.js HOST PORT QUEUE N — sends N messages (waiting for each `accepted`), then
// receives N with auto-accept and prints one JSON line {"sent": N, "received": [bodies]}.
// rhea is installed by .ci/run into tests/amqp/node_modules (npm install rhea).
"use strict";
const container = require("rhea");
const [host, port, queue, n] = [process.argv[2], Number(process.argv[3]), process.argv[4], Number(process.argv[5])];
let accepted = 0;
const received = [];
const timer = setTimeout(() => {
  console.log(JSON.stringify({ error: "timed out", accepted, received }));
  process.exit(1);
}, 20000);
container.on("connection_open", (ctx) => {
  const sender = ctx.connection.open_sender({ target: { address: queue } });
  let sent = 0;
  sender.on("sendable", () => {
    while (sender.sendable() && sent < n) {
      sender.send({ body: container.message.data_section(Buffer.from("rhea-" + sent)), subject: "from rhea", durable: true });
      sent++;
    }
  });
  sender.on("accepted", () => {
    accepted++;
    if (accepted === n) {
      ctx.connection.open_receiver({ source: { address: queue }, credit_window: 10 });
    }
  });
  sender.on("rejected", (c) => {
    console.log(JSON.stringify({ error: "rejected", condition: c.delivery.remote_state && c.delivery.remote_state.error }));
    process.exit(1);
  });
});
container.on("message", (ctx) => {
  const b = ctx.message.body;
  received.push(Buffer.isBuffer(b) ? b.toString() : (b && b.content ? Buffer.from(b.content).toString() : String(b)));
  if (received.length === n) {
    clearTimeout(timer);
    console.log(JSON.stringify({ sent: n, accepted, received, subject: ctx.message.subject }));
    ctx.connection.close();
  }
});
container.on("connection_close", () => process.exit(0));
container.on("error", (e) => {
  console.log(JSON.stringify({ error: String(e) }));
  process.exit(1);
});
container.connect({ host, port, reconnect: false });
