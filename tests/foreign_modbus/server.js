#!/usr/bin/env node
/*
 * A Modbus TCP server that is not pymodbus: modbus-serial's ServerTCP (Node.js),
 * shaped like the energy gateway of a furnace's electric boost panel. The
 * Modbus connector's integration test runs against it
 * (tests/integration/test_modbus_foreign_device.py).
 *
 * One TCP endpoint (a gateway) with two units behind it:
 *
 * unit 1: a Siemens SENTRON PAC3200-style power meter on the boost transformer.
 *   Measurements as IEEE 754 float32, big-endian (ABCD), at the PAC3200's
 *   offsets, readable with function 04 (input registers):
 *     1, 3, 5       voltage L1-N, L2-N, L3-N     V
 *     7, 9, 11      voltage L1-L2, L2-L3, L3-L1  V    (served, not configured)
 *     13, 15, 17    current L1, L2, L3           A
 *     55            frequency                    Hz
 *     63, 65, 67    total apparent, active, reactive power  VA, W, var
 *     69            total power factor
 *   Holding registers (function 03):
 *     205-206       device status, uint32 of flag bits (bit 0: pulse rate
 *                   exceeded, bit 18: voltage overload, bit 19: current overload)
 *     213-214       operating hours counter, uint32, seconds
 *     215-216       universal counter (gas meter pulses on DI 0.0), uint32
 *     801-804       active energy import tariff 1, float64, Wh
 *     64001-64008   serial number, 16 ASCII characters, NUL-padded
 *   No registers 217-222 (the slot of the optional expansion module this meter
 *   does not have): any read touching them is refused with exception 02
 *   (illegal data address), as the meter refuses a read across undefined
 *   registers.
 *   Coil 0: digital output DO 0.0 (on). Discrete input 0: DI 0.0 (off).
 *
 * unit 2: a WattNode-style meter (Continental Control Systems) of the
 *   auxiliary drives, on the gateway's RS-485 side. Its manual numbers
 *   registers from 1 (register 1001 is protocol address 1000); 32-bit values
 *   come low word first (CDAB):
 *     1000-1001     EnergySum       float32 CDAB  kWh
 *     1008-1009     PowerSum        float32 CDAB  W
 *     1016-1017     VoltAvgLN       float32 CDAB  V
 *     1032-1033     Freq            float32 CDAB  Hz
 *     1100-1101     EnergySum       int32, low word first, 0.1 kWh per count
 *     1134          PowerFactorAvg  int16, 0.01 per count (signed: -0.87 leading)
 *
 * Every value is constant: the test compares readings with them exactly.
 *
 * Usage:
 *   node server.js --port 5020 [--host 127.0.0.1] [--requests requests.jsonl]
 *
 * Prints `READY <port>` on stdout once listening. --requests appends one JSON
 * line per request received: {"unit": 1, "fc": 4, "address": 1, "count": 6}.
 * Commands on stdin, one per line, each acknowledged with `OK <command>`:
 *   silent UNIT SECONDS    the unit does not answer at all (requests time out)
 *   gateway UNIT SECONDS   the gateway answers for the unit with exception 0B
 *                          (gateway target device failed to respond)
 */
"use strict";

const fs = require("fs");
const readline = require("readline");
const ModbusRTU = require("modbus-serial");

const ILLEGAL_ADDRESS = 0x02;
const GATEWAY_NO_RESPONSE = 0x0b;

function parseArgs(argv) {
    const args = { host: "127.0.0.1", port: 5020, requests: null };
    for (let i = 0; i < argv.length; i += 2) {
        const key = argv[i].replace(/^--/, "");
        if (!(key in args)) {
            throw new Error(`unknown option ${argv[i]}`);
        }
        args[key] = key === "port" ? parseInt(argv[i + 1], 10) : argv[i + 1];
    }
    return args;
}

// -- the register map ---------------------------------------------------------

function words(type, value, order) {
    let buf;
    switch (type) {
        case "int16": buf = Buffer.alloc(2); buf.writeInt16BE(value); break;
        case "uint16": buf = Buffer.alloc(2); buf.writeUInt16BE(value); break;
        case "int32": buf = Buffer.alloc(4); buf.writeInt32BE(value); break;
        case "uint32": buf = Buffer.alloc(4); buf.writeUInt32BE(value); break;
        case "float32": buf = Buffer.alloc(4); buf.writeFloatBE(value); break;
        case "float64": buf = Buffer.alloc(8); buf.writeDoubleBE(value); break;
        default: throw new Error(`unknown type ${type}`);
    }
    const out = [];
    for (let i = 0; i < buf.length; i += 2) {
        out.push(buf.readUInt16BE(i));
    }
    // CDAB: the least significant word first, each word high byte first.
    return order === "CDAB" ? out.reverse() : out;
}

function stringWords(text, registers) {
    const buf = Buffer.alloc(registers * 2); // NUL-padded
    buf.write(text, "latin1");
    const out = [];
    for (let i = 0; i < buf.length; i += 2) {
        out.push(buf.readUInt16BE(i));
    }
    return out;
}

// [address, type, value, order]
const PAC3200_INPUT = [
    [1, "float32", 230.47], [3, "float32", 231.02], [5, "float32", 229.86],
    [7, "float32", 399.51], [9, "float32", 400.12], [11, "float32", 398.77],
    [13, "float32", 812.5], [15, "float32", 806.25], [17, "float32", 809.75],
    [55, "float32", 49.98],
    [63, "float32", 601234.5], [65, "float32", 561234.5], [67, "float32", 215000.25],
    [69, "float32", 0.934],
];
const PAC3200_STATUS = (1 << 0) | (1 << 19); // pulse rate exceeded, current overload
const PAC3200_HOLDING = [
    [205, "uint32", PAC3200_STATUS],
    [213, "uint32", 86754321],
    [215, "uint32", 4000000123],
    [801, "float64", 1234567890.125],
];
const WATTNODE_HOLDING = [
    [1000, "float32", 48213.25, "CDAB"],
    [1008, "float32", -18342.5, "CDAB"],
    [1016, "float32", 230.9, "CDAB"],
    [1032, "float32", 50.01, "CDAB"],
    [1100, "int32", 482132, "CDAB"],
    [1134, "int16", -87],
];

function buildMap() {
    const map = new Map();
    const put = (unit, table, entries) => {
        for (const [address, type, value, order] of entries) {
            words(type, value, order).forEach((word, i) => {
                map.set(`${unit}/${table}/${address + i}`, word);
            });
        }
    };
    put(1, "input", PAC3200_INPUT);
    put(1, "holding", PAC3200_HOLDING);
    stringWords("AE4712-0815-X9", 8).forEach((word, i) => {
        map.set(`1/holding/${64001 + i}`, word);
    });
    map.set("1/coil/0", true);
    map.set("1/discrete/0", false);
    put(2, "holding", WATTNODE_HOLDING);
    return map;
}

// -- faults -----------------------------------------------------------------------

const faults = new Map(); // unit -> {mode, until (ms)}

function faultOf(unit) {
    const fault = faults.get(unit);
    if (fault === undefined) {
        return null;
    }
    if (Date.now() >= fault.until) {
        faults.delete(unit);
        return null;
    }
    return fault.mode;
}

function modbusError(code, msg) {
    const err = new Error(msg);
    err.modbusErrorCode = code;
    return err;
}

function makeVector(map) {
    const get = (table) => (address, unit) => {
        const mode = faultOf(unit);
        if (mode === "silent") {
            return new Promise(() => {}); // never answered
        }
        if (mode === "gateway") {
            throw modbusError(GATEWAY_NO_RESPONSE, `unit ${unit} did not respond`);
        }
        const value = map.get(`${unit}/${table}/${address}`);
        if (value === undefined) {
            throw modbusError(ILLEGAL_ADDRESS, `unit ${unit} has no ${table} ${address}`);
        }
        return value;
    };
    return {
        getInputRegister: get("input"),
        getHoldingRegister: get("holding"),
        getCoil: get("coil"),
        getDiscreteInput: get("discrete"),
        setRegister: () => { throw modbusError(ILLEGAL_ADDRESS, "read-only"); },
        setCoil: () => { throw modbusError(ILLEGAL_ADDRESS, "read-only"); },
    };
}

// -- the request log -------------------------------------------------------------

function logRequests(sock, out) {
    let pending = Buffer.alloc(0);
    sock.on("data", (data) => {
        pending = Buffer.concat([pending, data]);
        while (pending.length >= 7) {
            const length = pending.readUInt16BE(4); // unit id + PDU
            if (pending.length < 6 + length) {
                break;
            }
            const frame = pending.subarray(6, 6 + length);
            pending = pending.subarray(6 + length);
            if (frame.length >= 6) {
                const row = {
                    unit: frame[0], fc: frame[1],
                    address: frame.readUInt16BE(2), count: frame.readUInt16BE(4),
                };
                out.write(JSON.stringify(row) + "\n");
            }
        }
    });
}

// -- main --------------------------------------------------------------------------

function main() {
    const args = parseArgs(process.argv.slice(2));
    const server = new ModbusRTU.ServerTCP(makeVector(buildMap()), {
        host: args.host, port: args.port, unitID: 255, // 255: answer every unit id
    });
    if (args.requests) {
        const out = fs.createWriteStream(args.requests, { flags: "a" });
        server._server.on("connection", (sock) => logRequests(sock, out));
    }
    server.on("serverError", (err) => {
        process.stderr.write(`server error: ${err}\n`);
        process.exit(1);
    });
    server.on("socketError", (err) => process.stderr.write(`socket error: ${err}\n`));
    server.on("initialized", () => process.stdout.write(`READY ${args.port}\n`));

    readline.createInterface({ input: process.stdin }).on("line", (line) => {
        const [mode, unit, seconds] = line.trim().split(/\s+/);
        if ((mode === "silent" || mode === "gateway") && unit && seconds) {
            faults.set(parseInt(unit, 10), { mode, until: Date.now() + parseFloat(seconds) * 1000 });
            process.stdout.write(`OK ${line.trim()}\n`);
        } else if (line.trim()) {
            process.stderr.write(`unknown command: ${line}\n`);
        }
    });
    for (const signal of ["SIGTERM", "SIGINT"]) {
        process.on(signal, () => server.close(() => process.exit(0)));
    }
}

main();
