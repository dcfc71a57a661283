// The official Node tus server (@tus/server + @tus/file-store) over HTTPS on loopback,
// for the interop tests.  Started by tests/support/tus_node.py, which passes:
//   TUS_NODE_DIR  directory holding node_modules with the pinned packages
//   TUS_STORE     upload directory (FileStore: <id> data, <id>.json info)
//   TUS_CERT, TUS_KEY  server certificate and key (PEM, from agent.devpki.DevCA)
//   TUS_HOST, TUS_PORT  listen address (port 0: any free port)
// It writes one JSON object per line on stdout: {"event":"listening","port":N} once,
// then {"event":"finish",...} for every completed upload.
import fs from "node:fs";
import https from "node:https";
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";

const env = process.env;
// ES modules ignore NODE_PATH: resolve the packages from the install directory.
const require = createRequire(path.join(env.TUS_NODE_DIR, "package.json"));
const load = (name) => import(pathToFileURL(require.resolve(name)).href);
const { Server, EVENTS } = await load("@tus/server");
const { FileStore } = await load("@tus/file-store");

const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");

const tus = new Server({
  path: "/files",
  datastore: new FileStore({ directory: env.TUS_STORE }),
  // Behind TLS the server cannot tell its own scheme and would say http://;
  // a relative Location is what the client must resolve against its endpoint.
  relativeLocation: true,
});
tus.on(EVENTS.POST_FINISH, (req, res, upload) => {
  emit({ event: "finish", id: upload.id, size: upload.size, offset: upload.offset,
         metadata: upload.metadata });
});

const server = https.createServer(
  { key: fs.readFileSync(env.TUS_KEY), cert: fs.readFileSync(env.TUS_CERT) },
  (req, res) => tus.handle(req, res),
);
server.listen(Number(env.TUS_PORT || 0), env.TUS_HOST || "127.0.0.1", () => {
  emit({ event: "listening", port: server.address().port });
});
const stop = () => {
  server.closeAllConnections();
  server.close(() => process.exit(0));
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
