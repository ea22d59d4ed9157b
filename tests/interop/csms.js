#!/usr/bin/env node
'use strict';
/*
 * An independent, strict OCPP 1.6J backend (CSMS) for the gateway's interop and
 * end-to-end tests. The OCPP side is npm `ocpp-rpc` (written by nobody here) in
 * strictMode, which validates every message in BOTH directions against the
 * official OCPP 1.6 JSON schemas that ship with it.
 *
 * Usage:  node csms.js [PORT [HEARTBEAT_INTERVAL]]     (PORT 0 = pick a free one)
 * Env:    CSMS_PASSWORD         require HTTP Basic auth, user = identity (security profile 1/2)
 *         CSMS_HEARTBEAT_INTERVAL  interval returned in BootNotification (default 300; argv wins)
 *         CSMS_TLS_CERT, CSMS_TLS_KEY   serve wss:// instead of ws:// (PEM files)
 *         CSMS_TLS_CA           also require a client certificate signed by this CA (profile 3)
 *
 * Listens on 127.0.0.1 only. Charge points connect to ws://127.0.0.1:PORT/<any path>/<identity>.
 *
 * stdout: one JSON object per line, for the test harness (tests/ocpp_rpc_peer.py):
 *   {"type":"listening","port":N,"tls":bool}                     once, when ready
 *   {"type":"connect","identity","protocol","endpoint","remoteAddress","headers","tlsClientSubject"}
 *   {"type":"auth-rejected","identity","status","reason"}        handshake refused
 *   {"type":"frame","identity","direction":"in"|"out","message"} every raw websocket message
 *   {"type":"call","identity","method","params","messageId"}     every CALL received
 *   {"type":"result","identity","method","messageId","result"}   every CALLRESULT we sent
 *   {"type":"error","identity","method","messageId","error"}     every CALLERROR we sent
 *   {"type":"violation","identity","messageId","method","params","result","outbound","isCall","error"}
 *        ocpp-rpc's 'strictValidationFailure'. outbound=false: the charge point sent it
 *        (its CALL, or its CALLRESULT to our call); outbound=true: our side was at fault.
 *   {"type":"bad-message","identity","message","error"}          not a valid OCPP-J frame at all
 *   {"type":"disconnect","identity","code","reason"}
 *   {"type":"call-result","id","identity","method","result"}     answers to stdin commands
 *   {"type":"call-error","id","identity","method","error":{"code","message","details"}}
 *   {"type":"ack","id"}  {"type":"command-error","id","message"}
 *
 * stdin: one JSON command per line:
 *   {"cmd":"call","id":..,"identity":..,"method":..,"params":{..},"timeoutMs"?:N,"skipValidation"?:bool}
 *        skipValidation sends the frame as is (ocpp-rpc has no per-call switch for strictMode,
 *        so the frame goes out through sendRaw and its answer is taken from the raw stream,
 *        unvalidated): for tests that send deliberately invalid calls.
 *   {"cmd":"close","id":..,"identity":..,"code"?:N,"force"?:bool}   drop a charge point
 *   {"cmd":"configure","id":..,"bootStatus"?:"Accepted|Pending|Rejected",
 *        "heartbeatInterval"?:N,"idTagStatus"?:"Accepted|Blocked|Expired|Invalid|ConcurrentTx",
 *        "refuse"?:{"METHOD":N},   answer the next N calls of METHOD with a CALLERROR InternalError
 *        "passwordHex"?:HEX}       from now on require this Basic-auth password (the bytes of HEX), as a
 *                                  backend does after it set AuthorizationKey
 * EOF on stdin, SIGTERM or SIGINT: close every connection (1001) and exit 0.
 */

const fs = require('fs');
const https = require('https');
const readline = require('readline');
const { randomUUID } = require('crypto');
const { RPCServer, TimeoutError: RpcTimeoutError, createRPCError } = require('ocpp-rpc');

const HOST = '127.0.0.1';
const PROTOCOL = 'ocpp1.6';

function emit(record) {
    // stdout to a pipe is synchronous on Linux, so lines are never interleaved or lost at exit.
    process.stdout.write(JSON.stringify(record) + '\n');
}

function fail(message) {
    process.stderr.write(`csms.js: ${message}\n`);
    process.exit(2);
}

function parseNonNegativeInt(text, what, max) {
    if (!/^[0-9]+$/.test(String(text)) || Number(text) > max) {
        fail(`${what} must be an integer from 0 to ${max}, got '${text}'`);
    }
    return Number(text);
}

const port = parseNonNegativeInt(process.argv[2] ?? '0', 'PORT', 65535);
const settings = {
    bootStatus: 'Accepted',
    heartbeatInterval: parseNonNegativeInt(
        process.argv[3] ?? process.env.CSMS_HEARTBEAT_INTERVAL ?? '300', 'HEARTBEAT_INTERVAL', 2 ** 31 - 1),
    idTagStatus: 'Accepted',
    refuse: {},  // method -> how many more calls to answer with a CALLERROR
};

// A handler that first honours a pending "refuse" for its method.
function refusable(method, handler) {
    return (call) => {
        if (settings.refuse[method] > 0) {
            settings.refuse[method] -= 1;
            throw createRPCError('InternalError', `${method} refused on purpose (configure.refuse)`);
        }
        return handler(call);
    };
}
// The Basic-auth password required, as bytes (an AuthorizationKey is binary); configure.passwordHex replaces it.
let password = process.env.CSMS_PASSWORD === undefined ? undefined : Buffer.from(process.env.CSMS_PASSWORD);

// Global, not per connection: a charge point that reconnects must never be
// handed a transactionId it was already given.
let nextTransactionId = 1;
const clients = new Map(); // identity -> the newest connected RPCServerClient

function errorRecord(err) {
    // ocpp-rpc's own TimeoutError (call timeout) does not set .name, so test the class;
    // our raw-call timeout sets the name.
    if (err instanceof RpcTimeoutError || err?.name === 'TimeoutError') {
        return { code: 'Timeout', message: err.message };
    }
    return {
        code: err?.rpcErrorCode ?? err?.name ?? 'Error',
        message: err?.message ?? String(err),
        details: err?.details?.errors ?? err?.details ?? {},
    };
}

function frameId(text) {
    // The message id of an OCPP-J frame, or undefined when it is not one.
    try {
        const frame = JSON.parse(text);
        return Array.isArray(frame) && typeof frame[1] === 'string' ? frame[1] : undefined;
    } catch (err) {
        return undefined;
    }
}

const server = new RPCServer({ protocols: [PROTOCOL], strictMode: true });

server.auth((accept, reject, handshake) => {
    const { identity } = handshake;
    if (!handshake.protocols.has(PROTOCOL)) {
        // OCPP-J 1.6 §3.1.2: the charge point must offer the ocpp1.6 subprotocol.
        emit({ type: 'auth-rejected', identity, status: 400, reason: `subprotocol ${PROTOCOL} not offered`,
               protocols: [...handshake.protocols] });
        reject(400, `Subprotocol ${PROTOCOL} required`);
        return;
    }
    if (password !== undefined) {
        // ocpp-rpc gives a password only when the Basic-auth user equals the identity.
        if (!handshake.password || !handshake.password.equals(password)) {
            emit({ type: 'auth-rejected', identity, status: 401,
                   reason: handshake.headers.authorization ? 'bad credentials' : 'no credentials' });
            reject(401, 'Unauthorized');
            return;
        }
    }
    accept({}, PROTOCOL);
});

server.on('error', (err) => process.stderr.write(`csms.js: server error: ${err.stack ?? err}\n`));

server.on('client', (client) => {
    const identity = client.identity;
    const { handshake } = client;
    const peerCert = handshake.request.socket.getPeerCertificate?.();
    emit({
        type: 'connect', identity, protocol: client.protocol, endpoint: handshake.endpoint,
        remoteAddress: handshake.remoteAddress, headers: handshake.headers,
        tlsClientSubject: peerCert && peerCert.subject ? peerCert.subject : null,
    });
    clients.set(identity, client);

    const inboundMethods = new Map(); // messageId -> method of a CALL we are answering
    const rawPending = new Map();     // messageId -> resolver of a skipValidation call
    const rawAnswered = new Set();    // ids of raw answers ocpp-rpc will flag as unrecognised

    client.on('message', ({ message, outbound }) => {
        const text = message.toString();
        emit({ type: 'frame', identity, direction: outbound ? 'out' : 'in', message: text });
        if (outbound) return;
        const id = frameId(text);
        const waiter = id !== undefined ? rawPending.get(id) : undefined;
        if (waiter) {
            rawPending.delete(id);
            rawAnswered.add(id);
            waiter(JSON.parse(text));
        }
    });
    client.on('call', ({ outbound, payload }) => {
        if (outbound) return;
        const [, messageId, method, params] = payload;
        inboundMethods.set(messageId, method);
        emit({ type: 'call', identity, method, params, messageId });
    });
    client.on('response', ({ outbound, payload }) => {
        if (!outbound) return;
        const [kind, messageId, ...rest] = payload;
        const method = inboundMethods.get(messageId);
        inboundMethods.delete(messageId);
        if (kind === 3) {
            emit({ type: 'result', identity, method, messageId, result: rest[0] });
        } else {
            emit({ type: 'error', identity, method, messageId,
                   error: { code: rest[0], message: rest[1], details: rest[2] } });
        }
    });
    client.on('strictValidationFailure', (ev) => {
        emit({
            type: 'violation', identity, messageId: ev.messageId, method: ev.method, params: ev.params,
            result: ev.result, outbound: ev.outbound, isCall: ev.isCall, error: errorRecord(ev.error),
        });
    });
    client.on('badMessage', ({ buffer, error }) => {
        const text = buffer.toString();
        const id = frameId(text);
        if (id !== undefined && rawAnswered.delete(id)) return; // the answer to a skipValidation call
        emit({ type: 'bad-message', identity, message: text, error: errorRecord(error) });
    });
    client.on('close', ({ code, reason }) => {
        emit({ type: 'disconnect', identity, code, reason });
        for (const waiter of rawPending.values()) waiter(null);
        rawPending.clear();
        if (clients.get(identity) === client) clients.delete(identity);
    });

    client.rawCall = (method, params, timeoutMs) => new Promise((resolve, reject) => {
        const messageId = randomUUID();
        const timer = setTimeout(() => {
            rawPending.delete(messageId);
            const err = new Error('Call timeout');
            err.name = 'TimeoutError';
            reject(err);
        }, timeoutMs);
        rawPending.set(messageId, (frame) => {
            clearTimeout(timer);
            if (frame === null) {
                reject(new Error('Client disconnected'));
            } else if (frame[0] === 3) {
                resolve(frame[2]);
            } else {
                const err = new Error(frame[3] ?? '');
                err.rpcErrorCode = frame[2];
                err.details = frame[4];
                reject(err);
            }
        });
        client.sendRaw(JSON.stringify([2, messageId, method, params]));
    });

    const now = () => new Date().toISOString();
    const idTagInfo = () => ({ status: settings.idTagStatus });
    client.handle('BootNotification', () => ({
        status: settings.bootStatus, currentTime: now(), interval: settings.heartbeatInterval,
    }));
    client.handle('Heartbeat', () => ({ currentTime: now() }));
    client.handle('StatusNotification', () => ({}));
    client.handle('Authorize', () => ({ idTagInfo: idTagInfo() }));
    client.handle('StartTransaction', refusable('StartTransaction', () => ({ transactionId: nextTransactionId++, idTagInfo: idTagInfo() })));
    // OCPP 1.6 §6.50: idTagInfo only when the StopTransaction carried an idTag.
    client.handle('StopTransaction', refusable('StopTransaction', ({ params }) => (params.idTag !== undefined ? { idTagInfo: idTagInfo() } : {})));
    client.handle('MeterValues', refusable('MeterValues', () => ({})));
    client.handle('DataTransfer', () => ({ status: 'Accepted' }));
    client.handle('DiagnosticsStatusNotification', () => ({}));
    client.handle('FirmwareStatusNotification', () => ({}));
});

async function runCommand(cmd) {
    const { id } = cmd;
    if (cmd.cmd === 'configure') {
        for (const key of ['bootStatus', 'heartbeatInterval', 'idTagStatus']) {
            if (cmd[key] !== undefined) settings[key] = cmd[key];
        }
        Object.assign(settings.refuse, cmd.refuse ?? {});
        if (cmd.passwordHex !== undefined) password = Buffer.from(cmd.passwordHex, 'hex');
        emit({ type: 'ack', id });
        return;
    }
    const client = clients.get(cmd.identity);
    if (cmd.cmd === 'close') {
        if (client) await client.close({ code: cmd.code ?? 1000, force: Boolean(cmd.force) });
        emit({ type: 'ack', id });
        return;
    }
    if (cmd.cmd !== 'call') {
        emit({ type: 'command-error', id, message: `unknown cmd '${cmd.cmd}'` });
        return;
    }
    const { identity, method } = cmd;
    const params = cmd.params ?? {};
    if (!client) {
        emit({ type: 'call-error', id, identity, method,
               error: { code: 'NotConnected', message: `no charge point '${identity}' is connected` } });
        return;
    }
    const timeoutMs = cmd.timeoutMs ?? 30000;
    try {
        const result = cmd.skipValidation
            ? await client.rawCall(method, params, timeoutMs)
            : await client.call(method, params, { callTimeoutMs: timeoutMs });
        emit({ type: 'call-result', id, identity, method, result });
    } catch (err) {
        emit({ type: 'call-error', id, identity, method, error: errorRecord(err) });
    }
}

let httpServer;
let closing = false;

async function shutdown() {
    if (closing) return;
    closing = true;
    // Do not wait forever for a charge point that ignores the close frame.
    setTimeout(() => process.exit(0), 3000).unref();
    await server.close({ code: 1001, reason: 'CSMS shutting down' });
    await new Promise((resolve) => httpServer.close(resolve));
    process.exit(0);
}

async function main() {
    const cert = process.env.CSMS_TLS_CERT;
    const key = process.env.CSMS_TLS_KEY;
    const ca = process.env.CSMS_TLS_CA;
    if (Boolean(cert) !== Boolean(key)) fail('CSMS_TLS_CERT and CSMS_TLS_KEY go together');
    if (cert) {
        let options;
        try {
            options = {
                cert: fs.readFileSync(cert), key: fs.readFileSync(key), minVersion: 'TLSv1.2',
                ...(ca ? { ca: fs.readFileSync(ca), requestCert: true, rejectUnauthorized: true } : {}),
            };
        } catch (err) {
            fail(`cannot read TLS files: ${err.message}`);
        }
        httpServer = https.createServer(options, (req, res) => {
            res.statusCode = 404;
            res.end();
        });
        httpServer.on('upgrade', server.handleUpgrade);
        await new Promise((resolve, reject) => {
            httpServer.once('error', reject);
            httpServer.listen(port, HOST, resolve);
        });
    } else {
        httpServer = await server.listen(port, HOST);
    }
    emit({ type: 'listening', port: httpServer.address().port, tls: Boolean(cert) });

    const input = readline.createInterface({ input: process.stdin });
    input.on('line', (line) => {
        if (!line.trim()) return;
        let cmd;
        try {
            cmd = JSON.parse(line);
        } catch (err) {
            emit({ type: 'command-error', id: null, message: `not JSON: ${line}` });
            return;
        }
        runCommand(cmd).catch((err) => emit({ type: 'command-error', id: cmd.id, message: String(err.stack ?? err) }));
    });
    input.on('close', shutdown);
    process.on('SIGTERM', shutdown);
    process.on('SIGINT', shutdown);
}

main().catch((err) => {
    process.stderr.write(`csms.js: ${err.stack ?? err}\n`);
    process.exit(1);
});
