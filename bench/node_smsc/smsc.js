#!/usr/bin/env node
'use strict';
/*
 * An SMPP 3.4 SMSC built on node-smpp (the npm package `smpp`), to benchmark the gateway against an SMSC
 * that is not ours:
 *
 *   node bench/node_smsc/smsc.js --port 2775 --system-id bench --password benchpw &
 *   .venv/bin/python bench/outbound.py --smsc 127.0.0.1:2775 --messages 100000
 *
 * - Listens on 127.0.0.1 only (a loopback --host is accepted, nothing else).
 * - bind_transmitter / bind_receiver / bind_transceiver are checked against --system-id / --password
 *   (ESME_RINVSYSID 0x0F / ESME_RINVPASWD 0x0E, then close); a second bind on a bound session gets
 *   ESME_RALYBND 0x05. bind_*_resp carries our system_id and sc_interface_version 0x34.
 * - submit_sm (on a TX/TRX bind; else ESME_RINVBNDSTS 0x04) is answered at once with submit_sm_resp, message_id
 *   from a counter (--message-id-format decimal|hex, starting at --id-start).
 * - When the submit asks for a receipt (registered_delivery & 3 == 1, or --always-receipt), a delivery receipt
 *   deliver_sm (esm_class 0x04, data_coding 0, Appendix B text, receipted_message_id and message_state TLVs) is
 *   sent --receipt-delay-ms later (default 50) to a bound RX/TRX session of the account, round robin, at most
 *   --receipt-window unanswered per session; while none is bound (or every window is full) it waits in a queue.
 *   Receipts are batched: one timer (--tick-ms) moves every due receipt out, not one setTimeout per message.
 * - A deliver_sm without deliver_sm_resp within --resend-after-ms (default 10000) is sent again (new
 *   sequence_number); on a session that closes, its unanswered receipts go back to the queue. A deliver_sm_resp
 *   with ESME_RX_T_APPN 0x64 / RSYSERR 0x08 / RMSGQFUL 0x14 / RTHROTTLED 0x58, or a generic_nack, is retried after
 *   --retry-after-ms; any other error status drops the receipt (counted).
 * - enquire_link is answered in any state; unbind gets unbind_resp, then the connection is closed.
 * - SIGTERM / SIGINT (or --exit-after seconds) prints one JSON line of counters on stdout and exits.
 */

const smpp = require('smpp');

const USAGE = `usage: node smsc.js [--port N] [--system-id ID] [--password PW] [options]

  --host H               listen address, loopback only (default 127.0.0.1)
  --port N               TCP port (default $SMSC_PORT or 2775; 0 = any free port, printed on stderr)
  --system-id ID         account system_id (default $SMSC_SYSTEM_ID or "bench")
  --password PW          account password (default $SMSC_PASSWORD or "benchpw")
  --smsc-id ID           system_id we answer in bind_resp (default "NODESMPP")
  --message-id-format F  decimal | hex: message_id in submit_sm_resp (default decimal)
  --receipt-id-format F  decimal | hex: the id in the receipt text and receipted_message_id
                         (default: same as --message-id-format)
  --id-start N           first message id (default 1000000000: 10 decimal digits, hex differs)
  --receipt-delay-ms N   submit_sm -> receipt delay (default 50)
  --tick-ms N            receipt batching timer period (default 5)
  --receipt-window N     unanswered deliver_sm per session (default 1000)
  --resend-after-ms N    resend a deliver_sm with no deliver_sm_resp after this (default 10000)
  --retry-after-ms N     retry delay after a temporary deliver_sm_resp error or generic_nack (default 1000)
  --always-receipt       send a receipt even when registered_delivery does not ask for one
  --stats-interval S     print the counters on stderr every S seconds (default 0: never)
  --exit-after S         print the summary and exit after S seconds (default 0: run until SIGTERM/SIGINT)
  --verbose              log binds, unbinds and errors on stderr
`;

// ---------------------------------------------------------------------------------------------- options

function parseArgs(argv) {
  const env = process.env;
  const o = {
    host: '127.0.0.1',
    port: env.SMSC_PORT !== undefined ? Number(env.SMSC_PORT) : 2775,
    systemId: env.SMSC_SYSTEM_ID || 'bench',
    password: env.SMSC_PASSWORD || 'benchpw',
    smscId: 'NODESMPP',
    messageIdFormat: 'decimal',
    receiptIdFormat: null,
    idStart: 1000000000,
    receiptDelayMs: 50,
    tickMs: 5,
    receiptWindow: 1000,
    resendAfterMs: 10000,
    retryAfterMs: 1000,
    alwaysReceipt: false,
    statsInterval: 0,
    exitAfter: 0,
    verbose: false,
  };
  const flags = {
    '--host': ['host', String], '--port': ['port', Number], '--system-id': ['systemId', String],
    '--password': ['password', String], '--smsc-id': ['smscId', String],
    '--message-id-format': ['messageIdFormat', String], '--receipt-id-format': ['receiptIdFormat', String],
    '--id-start': ['idStart', Number], '--receipt-delay-ms': ['receiptDelayMs', Number],
    '--tick-ms': ['tickMs', Number], '--receipt-window': ['receiptWindow', Number],
    '--resend-after-ms': ['resendAfterMs', Number], '--retry-after-ms': ['retryAfterMs', Number],
    '--stats-interval': ['statsInterval', Number], '--exit-after': ['exitAfter', Number],
  };
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (arg === '-h' || arg === '--help') {
      process.stdout.write(USAGE);
      process.exit(0);
    } else if (arg === '--always-receipt') {
      o.alwaysReceipt = true;
    } else if (arg === '--verbose') {
      o.verbose = true;
    } else if (flags[arg]) {
      if (value === undefined) {
        if (i + 1 >= argv.length) die(`${arg} needs a value`);
        value = argv[++i];
      }
      const [key, conv] = flags[arg];
      o[key] = conv(value);
      if (conv === Number && !Number.isFinite(o[key])) die(`${arg}: not a number: ${value}`);
    } else {
      die(`unknown argument ${arg}`);
    }
  }
  if (o.receiptIdFormat === null) o.receiptIdFormat = o.messageIdFormat;
  for (const f of [o.messageIdFormat, o.receiptIdFormat]) {
    if (f !== 'decimal' && f !== 'hex') die(`id format must be decimal or hex, not ${f}`);
  }
  if (!/^(127\.\d+\.\d+\.\d+|localhost|::1)$/.test(o.host)) die(`--host must be a loopback address, not ${o.host}`);
  if (!Number.isInteger(o.port) || o.port < 0 || o.port > 65535) die(`bad port ${o.port}`);
  if (o.systemId.length > 15 || o.password.length > 8) die('system_id is at most 15 characters, password 8');
  if (o.smscId.length > 15) die('--smsc-id is at most 15 characters');
  if (!Number.isSafeInteger(o.idStart) || o.idStart < 0) die('--id-start must be a non-negative integer');
  if (o.tickMs < 1) o.tickMs = 1;
  if (o.receiptWindow < 1) die('--receipt-window must be >= 1');
  return o;
}

function die(msg) {
  process.stderr.write(`smsc.js: ${msg}\n${USAGE}`);
  process.exit(2);
}

const opt = parseArgs(process.argv.slice(2));

// ---------------------------------------------------------------------------------------------- state

const ESME_ROK = 0x00;
const ESME_RINVCMDID = 0x03;
const ESME_RINVBNDSTS = 0x04;
const ESME_RALYBND = 0x05;
const ESME_RSYSERR = 0x08;
const ESME_RINVPASWD = 0x0E;
const ESME_RINVSYSID = 0x0F;
const ESME_RMSGQFUL = 0x14;
const ESME_RTHROTTLED = 0x58;
const ESME_RX_T_APPN = 0x64;
const TEMPORARY = new Set([ESME_RSYSERR, ESME_RMSGQFUL, ESME_RTHROTTLED, ESME_RX_T_APPN]);

const startedAt = Date.now();
const counters = {
  connections: 0,
  binds_ok: 0,
  binds_tx: 0,
  binds_rx: 0,
  binds_trx: 0,
  binds_rejected: 0,
  submits: 0,
  submit_resps_ok: 0,
  submits_rejected: 0,
  receipts_not_requested: 0,
  receipts_scheduled: 0,
  deliver_sm_sent: 0,          // every send, resends included
  receipts_acked: 0,           // deliver_sm_resp status 0 (each receipt counted once)
  receipts_resent: 0,          // sent again after --resend-after-ms without a response
  receipts_retried: 0,         // temporary error status or generic_nack, sent again later
  receipts_dropped: 0,         // permanent error status in deliver_sm_resp
  receipts_requeued_on_close: 0,
  deliver_sm_resp_unknown: 0,  // response to a sequence_number we no longer wait for (late, after a resend)
  generic_nacks_received: 0,
  generic_nacks_sent: 0,
  enquire_links: 0,
  unbinds: 0,
  other_requests_refused: 0,
  session_errors: 0,
  max_inflight: 0,
  max_waiting: 0,
};

let nextMessageId = opt.idStart;
const formatId = (n, fmt) => (fmt === 'hex' ? n.toString(16).toUpperCase() : String(n));

// Receipts not yet due, in due order (the delay is constant, so a FIFO is ordered): [dueAt, job, dueAt, job, ...]
let dueQ = [];
let dueHead = 0;
// Receipts due, waiting for a bound receiver with room in its window. retryQ (resends, requeues) goes first.
let readyQ = [];
let readyHead = 0;
let retryQ = []; // [notBefore, job, ...] in the order they were added
let retryHead = 0;
const receivers = []; // bound RX/TRX session states
let rr = 0;
let inflightTotal = 0;
let pumpScheduled = false;

function waitingCount() {
  return (readyQ.length - readyHead) + (retryQ.length - retryHead) / 2;
}

// ---------------------------------------------------------------------------------------------- helpers

function log(msg) {
  if (opt.verbose) process.stderr.write(`smsc.js: ${msg}\n`);
}

// Writes of one event-loop turn go out in one syscall: cork now, uncork on the next tick.
function cork(st) {
  if (!st.corked && !st.sock.destroyed) {
    st.corked = true;
    st.sock.cork();
    process.nextTick(() => {
      st.corked = false;
      st.sock.uncork();
    });
  }
}

function reply(st, pdu, options) {
  cork(st);
  st.session.send(pdu.response(options));
}

let dateCacheMinute = -1;
let dateCacheText = '';
function yymmddhhmm(ms) {
  const minute = Math.floor(ms / 60000);
  if (minute === dateCacheMinute) return dateCacheText;
  const d = new Date(ms);
  const p2 = (n) => (n < 10 ? '0' : '') + n;
  const text = p2(d.getUTCFullYear() % 100) + p2(d.getUTCMonth() + 1) + p2(d.getUTCDate()) +
    p2(d.getUTCHours()) + p2(d.getUTCMinutes());
  dateCacheMinute = minute;
  dateCacheText = text;
  return text;
}

// The first 20 characters of what the ESME sent (node-smpp has decoded it per data_coding already).
function originalText(pdu) {
  const sm = pdu.message_payload || pdu.short_message;
  const msg = sm && typeof sm === 'object' && !Buffer.isBuffer(sm) ? sm.message : sm;
  if (typeof msg !== 'string') return ''; // binary / unknown coding: node-smpp leaves a Buffer
  return msg.slice(0, 20);
}

// ---------------------------------------------------------------------------------------------- receipts

function scheduleReceipt(st, pdu, messageNumber, now) {
  const job = {
    receiptId: formatId(messageNumber, opt.receiptIdFormat),
    srcTon: pdu.dest_addr_ton, srcNpi: pdu.dest_addr_npi, src: pdu.destination_addr || '',
    dstTon: pdu.source_addr_ton, dstNpi: pdu.source_addr_npi, dst: pdu.source_addr || '',
    submittedAt: now,
    text: originalText(pdu),
    attempts: 0,
    acked: false,
  };
  counters.receipts_scheduled++;
  dueQ.push(now + opt.receiptDelayMs, job);
}

function buildReceipt(job, now) {
  const text = `id:${job.receiptId} sub:001 dlvrd:001 submit date:${yymmddhhmm(job.submittedAt)}` +
    ` done date:${yymmddhhmm(now)} stat:DELIVRD err:000 text:${job.text}`;
  // data_coding 0 given explicitly: node-smpp then GSM 03.38-encodes the string (unpacked, one septet per
  // octet). With data_coding left null it would write the same GSM bytes but label them 0x01 (IA5).
  return new smpp.PDU('deliver_sm', {
    source_addr_ton: job.srcTon, source_addr_npi: job.srcNpi, source_addr: job.src,
    dest_addr_ton: job.dstTon, dest_addr_npi: job.dstNpi, destination_addr: job.dst,
    esm_class: 0x04,
    data_coding: 0x00,
    short_message: text,
    receipted_message_id: job.receiptId,
    message_state: 2, // DELIVERED
  });
}

function pickReceiver() {
  const n = receivers.length;
  for (let i = 0; i < n; i++) {
    const st = receivers[(rr + i) % n];
    if (st.inflight.size < opt.receiptWindow && !st.sock.destroyed && st.sock.writable) {
      rr = (rr + i + 1) % n;
      return st;
    }
  }
  return null;
}

// Returns false when the job could not be handed to a socket (it stays the caller's).
function sendReceipt(st, job, now) {
  if (!job.pdu) job.pdu = buildReceipt(job, now); // done date: the first send
  job.pdu.sequence_number = 0; // node-smpp numbers requests whose sequence_number is 0
  job.pdu.command_length = 0;
  cork(st);
  if (!st.session.send(job.pdu)) return false;
  job.attempts++;
  job.sentAt = now;
  job.seq = job.pdu.sequence_number;
  job.owner = st;
  st.inflight.set(job.seq, job);
  inflightTotal++;
  if (inflightTotal > counters.max_inflight) counters.max_inflight = inflightTotal;
  counters.deliver_sm_sent++;
  return true;
}

function compact() {
  if (dueHead > 65536 && dueHead * 2 > dueQ.length) { dueQ = dueQ.slice(dueHead); dueHead = 0; }
  if (readyHead > 32768 && readyHead * 2 > readyQ.length) { readyQ = readyQ.slice(readyHead); readyHead = 0; }
  if (retryHead > 4096 && retryHead * 2 > retryQ.length) { retryQ = retryQ.slice(retryHead); retryHead = 0; }
}

function pump(now) {
  // Retries whose time has come go first (they are in time order too: a constant delay each).
  while (retryHead < retryQ.length && retryQ[retryHead] <= now) {
    const job = retryQ[retryHead + 1];
    if (job.acked) { retryHead += 2; continue; }
    const st = pickReceiver();
    if (!st) break;
    if (!sendReceipt(st, job, now)) break;
    retryHead += 2;
  }
  while (readyHead < readyQ.length) {
    const st = pickReceiver();
    if (!st) break;
    if (!sendReceipt(st, readyQ[readyHead], now)) break;
    readyQ[readyHead++] = undefined;
  }
  const waiting = waitingCount();
  if (waiting > counters.max_waiting) counters.max_waiting = waiting;
  compact();
}

function schedulePump() {
  if (!pumpScheduled) {
    pumpScheduled = true;
    setImmediate(() => {
      pumpScheduled = false;
      pump(Date.now());
    });
  }
}

function retryLater(job, now, delay) {
  retryQ.push(now + delay, job);
}

function forgetInflight(st, seq) {
  const job = st.inflight.get(seq);
  if (job) {
    st.inflight.delete(seq);
    inflightTotal--;
  }
  return job;
}

let lastSweep = 0;
function tick() {
  const now = Date.now();
  while (dueHead < dueQ.length && dueQ[dueHead] <= now) {
    readyQ.push(dueQ[dueHead + 1]);
    dueQ[dueHead + 1] = undefined;
    dueHead += 2;
  }
  if (now - lastSweep >= 250) {
    lastSweep = now;
    // Unanswered deliver_sm: the Map keeps send order, so stop at the first one still in time.
    for (const st of sessions) {
      for (const [seq, job] of st.inflight) {
        if (now - job.sentAt < opt.resendAfterMs) break;
        forgetInflight(st, seq);
        counters.receipts_resent++;
        retryLater(job, now, 0);
      }
    }
  }
  pump(now);
}

// ---------------------------------------------------------------------------------------------- sessions

// No new deliver_sm for this session (unbind or close).
function stopSending(st) {
  const i = receivers.indexOf(st);
  if (i >= 0) receivers.splice(i, 1);
}

// The connection is gone: its unanswered deliver_sm go back to the queue for another receiver.
function detach(st) {
  stopSending(st);
  if (st.inflight.size) {
    const now = Date.now();
    for (const seq of [...st.inflight.keys()]) {
      const job = forgetInflight(st, seq);
      counters.receipts_requeued_on_close++;
      retryLater(job, now, 0);
    }
    schedulePump();
  }
}

// Half-close now (our FIN after the response); if the peer does not close in 2 s, drop the connection.
function closeSoon(st) {
  st.session.close();
  setTimeout(() => st.sock.destroy(), 2000).unref();
}

function onBind(st, pdu, mode) {
  if (st.state !== 'open') {
    reply(st, pdu, { command_status: ESME_RALYBND });
    return;
  }
  let status = ESME_ROK;
  if (pdu.system_id !== opt.systemId) status = ESME_RINVSYSID;
  else if (pdu.password !== opt.password) status = ESME_RINVPASWD;
  if (status !== ESME_ROK) {
    counters.binds_rejected++;
    log(`bind ${mode} refused for ${JSON.stringify(pdu.system_id)}: status 0x${status.toString(16)}`);
    cork(st);
    // With an error status node-smpp writes a header-only bind_*_resp (spec §4.1.2).
    st.session.send(pdu.response({ command_status: status }), () => closeSoon(st));
    return;
  }
  st.state = mode;
  st.systemId = pdu.system_id;
  counters.binds_ok++;
  counters[`binds_${mode}`]++;
  reply(st, pdu, { system_id: opt.smscId, sc_interface_version: 0x34 });
  log(`bound ${mode} #${st.number} system_id=${pdu.system_id} interface_version=0x${
    (pdu.interface_version || 0).toString(16)}`);
  if (mode === 'rx' || mode === 'trx') {
    receivers.push(st);
    schedulePump();
  }
}

function onSubmit(st, pdu) {
  counters.submits++;
  if (st.state !== 'tx' && st.state !== 'trx') {
    counters.submits_rejected++;
    reply(st, pdu, { command_status: ESME_RINVBNDSTS });
    return;
  }
  const number = nextMessageId++;
  reply(st, pdu, { message_id: formatId(number, opt.messageIdFormat) });
  counters.submit_resps_ok++;
  if (opt.alwaysReceipt || ((pdu.registered_delivery || 0) & 0x03) === 1) {
    scheduleReceipt(st, pdu, number, Date.now());
  } else {
    counters.receipts_not_requested++;
  }
}

function onDeliverSmResp(st, pdu) {
  const job = forgetInflight(st, pdu.sequence_number);
  if (!job) {
    counters.deliver_sm_resp_unknown++;
    return;
  }
  const status = pdu.command_status;
  if (status === ESME_ROK) {
    if (!job.acked) {
      job.acked = true;
      job.pdu = null;
      counters.receipts_acked++;
    }
  } else if (TEMPORARY.has(status)) {
    counters.receipts_retried++;
    retryLater(job, Date.now(), opt.retryAfterMs);
  } else {
    counters.receipts_dropped++;
    job.acked = true;
    log(`deliver_sm_resp status 0x${status.toString(16)} for receipt ${job.receiptId}: dropped`);
  }
  schedulePump();
}

function onGenericNack(st, pdu) {
  counters.generic_nacks_received++;
  log(`generic_nack status 0x${pdu.command_status.toString(16)} seq ${pdu.sequence_number}`);
  const job = forgetInflight(st, pdu.sequence_number);
  if (job) {
    counters.receipts_retried++;
    retryLater(job, Date.now(), opt.retryAfterMs);
  }
}

let sessionNumber = 0;
const sessions = new Set();

function onSession(session) {
  const st = {
    number: ++sessionNumber,
    session,
    sock: session.socket,
    state: 'open',
    systemId: null,
    inflight: new Map(),
    corked: false,
  };
  counters.connections++;
  sessions.add(st);
  session.socket.setNoDelay(true);

  session.on('pdu', (pdu) => {
    switch (pdu.command) {
      case 'submit_sm': onSubmit(st, pdu); break;
      case 'deliver_sm_resp': onDeliverSmResp(st, pdu); break;
      case 'enquire_link': counters.enquire_links++; reply(st, pdu); break;
      case 'bind_transceiver': onBind(st, pdu, 'trx'); break;
      case 'bind_transmitter': onBind(st, pdu, 'tx'); break;
      case 'bind_receiver': onBind(st, pdu, 'rx'); break;
      case 'unbind':
        counters.unbinds++;
        if (st.state === 'open') {
          reply(st, pdu, { command_status: ESME_RINVBNDSTS });
          break;
        }
        log(`unbind #${st.number}`);
        st.state = 'closing';
        stopSending(st); // deliver_sm_resp may still arrive before the close; the rest is requeued then
        cork(st);
        session.send(pdu.response(), () => closeSoon(st));
        break;
      case 'generic_nack': onGenericNack(st, pdu); break;
      case 'unknown':
        // node-smpp answers an unknown command_id with generic_nack ESME_RINVCMDID (PDU.response()).
        counters.generic_nacks_sent++;
        reply(st, pdu);
        break;
      default:
        if (pdu.isResponse()) break; // enquire_link_resp, unbind_resp, ...: we await none of them
        counters.other_requests_refused++;
        if (smpp.commands[`${pdu.command}_resp`]) {
          reply(st, pdu, { command_status: ESME_RINVCMDID });
        } else {
          counters.generic_nacks_sent++;
          cork(st);
          session.send(new smpp.PDU('generic_nack', {
            sequence_number: pdu.sequence_number, command_status: ESME_RINVCMDID,
          }));
        }
    }
  });
  // node-smpp emits 'error' for a PDU it cannot parse (e.g. command_length over 16384) and then stops reading
  // the socket for good; the only way on is to close the connection.
  session.on('error', (err) => {
    counters.session_errors++;
    log(`session #${st.number} error: ${err && err.message}`);
    session.destroy();
  });
  session.on('close', () => {
    st.state = 'closed';
    sessions.delete(st);
    detach(st);
  });
}

// ---------------------------------------------------------------------------------------------- main

const server = smpp.createServer(onSession);
server.on('error', (err) => {
  process.stderr.write(`smsc.js: ${err.message}\n`);
  process.exit(1);
});
server.listen(opt.port, opt.host, () => {
  const addr = server.address();
  process.stderr.write(`smsc.js: node-smpp ${require('smpp/package.json').version} SMSC listening on ` +
    `${addr.address}:${addr.port} (system_id ${opt.systemId}, receipt delay ${opt.receiptDelayMs} ms, ids ` +
    `${opt.messageIdFormat}/${opt.receiptIdFormat})\n`);
});

const ticker = setInterval(tick, opt.tickMs);

function snapshot() {
  return {
    smsc: 'node-smpp',
    node_smpp_version: require('smpp/package.json').version,
    uptime_s: Math.round((Date.now() - startedAt) / 100) / 10,
    ...counters,
    bound_receivers: receivers.length,
    open_sessions: sessions.size,
    receipts_not_due: (dueQ.length - dueHead) / 2,
    receipts_waiting: waitingCount(),
    receipts_inflight: inflightTotal,
    settings: {
      system_id: opt.systemId, receipt_delay_ms: opt.receiptDelayMs, tick_ms: opt.tickMs,
      receipt_window: opt.receiptWindow, resend_after_ms: opt.resendAfterMs,
      message_id_format: opt.messageIdFormat, receipt_id_format: opt.receiptIdFormat, id_start: opt.idStart,
    },
  };
}

if (opt.statsInterval > 0) {
  setInterval(() => process.stderr.write(`${JSON.stringify(snapshot())}\n`), opt.statsInterval * 1000).unref();
}

let stopping = false;
function shutdown(reason) {
  if (stopping) return;
  stopping = true;
  clearInterval(ticker);
  const summary = snapshot();
  summary.stopped_by = reason;
  process.stdout.write(`${JSON.stringify(summary)}\n`, () => {
    for (const st of sessions) st.sock.destroy();
    server.close();
    process.exit(0);
  });
  setTimeout(() => process.exit(0), 2000).unref(); // never hang on a blocked stdout
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
if (opt.exitAfter > 0) setTimeout(() => shutdown('exit-after'), opt.exitAfter * 1000).unref();
