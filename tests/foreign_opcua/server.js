#!/usr/bin/env node
/*
 * A node-opcua server whose address space looks like a Siemens S7-1500's
 * built-in OPC UA server (and one CODESYS variable), not like our asyncua
 * simulator. The OPC UA connector's integration tests run against it
 * (tests/integration/test_opcua_foreign_server.py).
 *
 * Namespaces (index: URI):
 *   0  http://opcfoundation.org/UA/
 *   1  urn:SIMATIC.S7-1500.OPC-UA.Application:PLC_1  (the server's own)
 *   2  http://opcfoundation.org/UA/DI/                 (DeviceSet lives here)
 *   3  http://www.siemens.com/simatic-s7-opcua
 *   4  CODESYSSPV3/3S/IecVarAccess
 *
 * Address space (BrowseNames; node ids on the right):
 *   Objects/PLC_1                                   ns=3;s=PLC
 *     DataBlocksGlobal                              ns=3;s=DataBlocksGlobal
 *       Furnace_DB                                  ns=3;s="Furnace_DB"
 *         CrownTemp_Z2  Double  °C, EURange, history, every 100 ms
 *         GasFlow       Double  m³/h, EURange, history, every 150 ms
 *         BottomTemp    Double  no units, history, every 200 ms
 *         Pressure      Double  no units, no history, every 120 ms
 *         BurnerCount   Int16   every 1 s
 *         FiringSide    Boolean every 1 s
 *         RecipeName    String  every 1 s
 *                                                   ns=3;s="Furnace_DB"."CrownTemp_Z2" ...
 *       Feeder_DB                                   ns=3;s="Feeder_DB"
 *         GobTemp       Double  °C, no history, every 200 ms
 *       Burner_DB                                   ns=3;s="Burner_DB"
 *         Burner1       a struct: a Variable without a value, its members below
 *           GasValve    Double  every 200 ms        ns=3;s="Burner_DB"."Burner1"."GasValve"
 *           FlameOn     Boolean every 1 s
 *   Objects/DeviceSet                               ns=2;i=5001
 *     PLC/Resources/Application/GlobalVars/GVL      (CODESYS layout)
 *       feeder_gob_weight  Double  g, EURange, history, every 150 ms
 *                                                   ns=4;s=|var|PLC.Application.GVL.feeder_gob_weight
 *       scan_time_ms       Double  history, every 20 ms
 *
 * Every write is a new value (a random walk whose steps are never zero) with
 * a SourceTimestamp of the write's wall-clock millisecond, so history and the
 * value log hold exactly the same samples. The next write of a variable is
 * scheduled from the previous one (never two writes of one variable closer
 * than its period, whatever the event loop does).
 *
 * Usage:
 *   node server.js --port 4840 [--values values.jsonl] [--pki DIR]
 *                  [--user NAME --password SECRET]
 *
 * --port 0 picks a free port. Prints `READY <port>` on stdout once listening.
 * With --user, anonymous logins are refused and only NAME/SECRET is accepted.
 * --values appends one JSON line per written value:
 *   {"node_id": "ns=3;s=\"Furnace_DB\".\"CrownTemp_Z2\"", "name": "Furnace_DB.CrownTemp_Z2",
 *    "ts": "2026-01-01T12:00:00.100Z", "epoch_ms": 1767268800100, "value": 1571.23}
 * Every failed login is written to stderr as `LOGIN REFUSED <user>`.
 */
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const {
    OPCUAServer,
    OPCUACertificateManager,
    DataType,
    Variant,
    StatusCodes,
    standardUnits,
    nodesets,
} = require("node-opcua");

const S7_URI = "http://www.siemens.com/simatic-s7-opcua";
const CODESYS_URI = "CODESYSSPV3/3S/IecVarAccess";
const DI_URI = "http://opcfoundation.org/UA/DI/";
const APPLICATION_URI = "urn:SIMATIC.S7-1500.OPC-UA.Application:PLC_1";

function parseArgs(argv) {
    const args = { port: 4840, values: null, pki: null, user: null, password: null };
    for (let i = 0; i < argv.length; i++) {
        const key = argv[i];
        const value = argv[i + 1];
        switch (key) {
            case "--port":
                args.port = parseInt(value, 10);
                i++;
                break;
            case "--values":
                args.values = value;
                i++;
                break;
            case "--pki":
                args.pki = value;
                i++;
                break;
            case "--user":
                args.user = value;
                i++;
                break;
            case "--password":
                args.password = value;
                i++;
                break;
            default:
                throw new Error(`unknown argument ${key}`);
        }
    }
    if ((args.user === null) !== (args.password === null)) {
        throw new Error("--user and --password go together");
    }
    return args;
}

class ValueLog {
    constructor(file) {
        this.fd = file ? fs.openSync(file, "a") : null;
    }

    write(nodeId, name, date, value) {
        if (this.fd === null) {
            return;
        }
        const line = JSON.stringify({
            node_id: nodeId,
            name,
            ts: date.toISOString(),
            epoch_ms: date.getTime(),
            value,
        });
        fs.writeSync(this.fd, line + "\n");
    }
}

/** Writes `next()` into `variable` every `periodMs`, logging each value. */
function drive(variable, name, dataType, periodMs, next, log, onFirst) {
    const nodeId = variable.nodeId.toString();
    let stopped = false;
    const write = () => {
        if (stopped) {
            return;
        }
        const value = next();
        // A millisecond Date (no picoseconds): what is logged is what is served.
        const now = new Date();
        variable.setValueFromSource(new Variant({ dataType, value }), StatusCodes.Good, now);
        log.write(nodeId, name, now, value);
        if (onFirst) {
            const callback = onFirst;
            onFirst = null;
            callback();
        }
        setTimeout(write, periodMs);
    };
    write();
    return () => {
        stopped = true;
    };
}

/** A random walk rounded to 2 decimals whose steps are never zero. */
function walk(start, low, high) {
    let value = start;
    return () => {
        let step = (Math.random() - 0.5) * 2;
        step = Math.sign(step || 1) * Math.max(0.01, Math.abs(step));
        let candidate = Math.round((value + step) * 100) / 100;
        if (candidate < low || candidate > high) {
            candidate = Math.round((value - step) * 100) / 100;
        }
        value = candidate;
        return value;
    };
}

function buildAddressSpace(addressSpace, log) {
    const di = addressSpace.registerNamespace(DI_URI);
    const s7 = addressSpace.registerNamespace(S7_URI);
    const codesys = addressSpace.registerNamespace(CODESYS_URI);
    const table = addressSpace.getNamespaceArray().map((ns) => ns.namespaceUri);
    if (table[3] !== S7_URI || table[4] !== CODESYS_URI) {
        throw new Error(`unexpected namespace table ${JSON.stringify(table)}`);
    }
    const objects = addressSpace.rootFolder.objects;

    // -- Siemens S7-1500: PLC_1/DataBlocksGlobal/<DB>/<member>
    const plc = s7.addObject({ organizedBy: objects, browseName: "PLC_1", nodeId: "s=PLC" });
    const folder = (ns, parent, browseName, nodeId) =>
        ns.addObject({ typeDefinition: "FolderType", organizedBy: parent, browseName, nodeId });
    const blocks = folder(s7, plc, "DataBlocksGlobal", "s=DataBlocksGlobal");
    const furnace = s7.addObject({
        organizedBy: blocks,
        browseName: "Furnace_DB",
        nodeId: 's="Furnace_DB"',
    });
    const feeder = s7.addObject({
        organizedBy: blocks,
        browseName: "Feeder_DB",
        nodeId: 's="Feeder_DB"',
    });

    const member = (db, dbName, name) => ({
        componentOf: db,
        browseName: name,
        nodeId: `s="${dbName}"."${name}"`,
        minimumSamplingInterval: 0,
    });
    const analog = (ns, options, units, low, high) =>
        ns.addAnalogDataItem({
            ...options,
            dataType: "Double",
            engineeringUnitsRange: { low, high },
            engineeringUnits: units,
        });
    const plain = (ns, options, dataType) => ns.addVariable({ ...options, dataType });

    const drives = [];
    const historize = (variable) => () => addressSpace.installHistoricalDataNode(variable, { maxOnlineValues: 200000 });
    const add = (variable, name, dataType, periodMs, next, history) => {
        drives.push(
            drive(variable, name, dataType, periodMs, next, log, history ? historize(variable) : null)
        );
    };

    add(
        analog(s7, member(furnace, "Furnace_DB", "CrownTemp_Z2"), standardUnits.degree_celsius, 0, 1700),
        "Furnace_DB.CrownTemp_Z2",
        DataType.Double,
        100,
        walk(1571, 1500, 1650),
        true
    );
    add(
        analog(s7, member(furnace, "Furnace_DB", "GasFlow"), standardUnits.cubic_metre_per_hour, 0, 3000),
        "Furnace_DB.GasFlow",
        DataType.Double,
        150,
        walk(1520, 1300, 1800),
        true
    );
    add(
        plain(s7, member(furnace, "Furnace_DB", "BottomTemp"), "Double"),
        "Furnace_DB.BottomTemp",
        DataType.Double,
        200,
        walk(1300, 1250, 1350),
        true
    );
    add(
        plain(s7, member(furnace, "Furnace_DB", "Pressure"), "Double"),
        "Furnace_DB.Pressure",
        DataType.Double,
        120,
        walk(10, 5, 15),
        false
    );
    let burners = 0;
    add(
        plain(s7, member(furnace, "Furnace_DB", "BurnerCount"), "Int16"),
        "Furnace_DB.BurnerCount",
        DataType.Int16,
        1000,
        () => (burners = burners >= 12 ? 6 : burners + 1),
        false
    );
    let side = false;
    add(
        plain(s7, member(furnace, "Furnace_DB", "FiringSide"), "Boolean"),
        "Furnace_DB.FiringSide",
        DataType.Boolean,
        1000,
        () => (side = !side),
        false
    );
    let recipe = 0;
    add(
        plain(s7, member(furnace, "Furnace_DB", "RecipeName"), "String"),
        "Furnace_DB.RecipeName",
        DataType.String,
        1000,
        () => `AMBER_330ML_${(recipe += 1)}`,
        false
    );
    add(
        analog(s7, member(feeder, "Feeder_DB", "GobTemp"), standardUnits.degree_celsius, 600, 1400),
        "Feeder_DB.GobTemp",
        DataType.Double,
        200,
        walk(1130, 1090, 1170),
        false
    );

    // A struct member of a data block, as S7-1500 and CODESYS expose one: a
    // Variable (the struct itself, no scalar value) whose members are Variables.
    const burnerDb = s7.addObject({ organizedBy: blocks, browseName: "Burner_DB", nodeId: 's="Burner_DB"' });
    const burner = s7.addVariable({
        componentOf: burnerDb,
        browseName: "Burner1",
        nodeId: 's="Burner_DB"."Burner1"',
        dataType: "BaseDataType",
    });
    add(
        s7.addVariable({
            componentOf: burner,
            browseName: "GasValve",
            nodeId: 's="Burner_DB"."Burner1"."GasValve"',
            dataType: "Double",
            minimumSamplingInterval: 0,
        }),
        "Burner_DB.Burner1.GasValve",
        DataType.Double,
        200,
        walk(42, 0, 100),
        false
    );
    let flame = false;
    add(
        s7.addVariable({
            componentOf: burner,
            browseName: "FlameOn",
            nodeId: 's="Burner_DB"."Burner1"."FlameOn"',
            dataType: "Boolean",
            minimumSamplingInterval: 0,
        }),
        "Burner_DB.Burner1.FlameOn",
        DataType.Boolean,
        1000,
        () => (flame = !flame),
        false
    );

    // -- CODESYS: DeviceSet/PLC/Resources/Application/GlobalVars/GVL/<var>
    const deviceSet = di.addObject({ organizedBy: objects, browseName: "DeviceSet", nodeId: "i=5001" });
    const device = codesys.addObject({ componentOf: deviceSet, browseName: "PLC", nodeId: "s=|plc|PLC" });
    const resources = codesys.addObject({ componentOf: device, browseName: "Resources", nodeId: "s=|res|PLC" });
    const application = codesys.addObject({
        componentOf: resources,
        browseName: "Application",
        nodeId: "s=|appo|PLC.Application",
    });
    const globals = folder(codesys, application, "GlobalVars", "s=|fld|PLC.Application.GlobalVars");
    const gvl = codesys.addObject({ organizedBy: globals, browseName: "GVL", nodeId: "s=|plc|PLC.Application.GVL" });
    add(
        analog(
            codesys,
            {
                componentOf: gvl,
                browseName: "feeder_gob_weight",
                nodeId: "s=|var|PLC.Application.GVL.feeder_gob_weight",
                minimumSamplingInterval: 0,
            },
            standardUnits.gram,
            0,
            2000
        ),
        "GVL.feeder_gob_weight",
        DataType.Double,
        150,
        walk(380, 370, 390),
        true
    );
    // A fast signal: written every 20 ms, historized.
    add(
        codesys.addVariable({
            componentOf: gvl,
            browseName: "scan_time_ms",
            nodeId: "s=|var|PLC.Application.GVL.scan_time_ms",
            dataType: "Double",
            minimumSamplingInterval: 0,
        }),
        "GVL.scan_time_ms",
        DataType.Double,
        20,
        walk(4, 1, 8),
        true
    );
    return () => drives.forEach((stop) => stop());
}

async function main() {
    const args = parseArgs(process.argv.slice(2));
    const pki = args.pki || path.join(os.tmpdir(), "foreign-opcua-pki");
    const serverCertificateManager = new OPCUACertificateManager({
        rootFolder: path.join(pki, "server"),
        automaticallyAcceptUnknownCertificate: true,
    });
    const userCertificateManager = new OPCUACertificateManager({
        rootFolder: path.join(pki, "user"),
        automaticallyAcceptUnknownCertificate: true,
    });
    const server = new OPCUAServer({
        port: args.port,
        hostname: "127.0.0.1",
        resourcePath: "",
        nodeset_filename: [nodesets.standard],
        serverCertificateManager,
        userCertificateManager,
        serverInfo: {
            applicationUri: APPLICATION_URI,
            productUri: "urn:SIMATIC.S7-1500.OPC-UA.Application",
            applicationName: { text: "SIMATIC.S7-1500.OPC-UA.Application:PLC_1" },
        },
        buildInfo: {
            productName: "SIMATIC S7-1500 (node-opcua stand-in)",
            manufacturerName: "test",
            softwareVersion: "V3.1",
        },
        allowAnonymous: args.user === null,
        userManager: {
            isValidUser: (user, password) => {
                const ok = args.user !== null && user === args.user && password === args.password;
                if (!ok) {
                    process.stderr.write(`LOGIN REFUSED ${user}\n`);
                }
                return ok;
            },
        },
    });
    await server.initialize();
    const stopDrives = buildAddressSpace(server.engine.addressSpace, new ValueLog(args.values));
    await server.start();
    const port = server.endpoints[0].port;
    process.stdout.write(`READY ${port}\n`);

    const shutdown = async () => {
        stopDrives();
        await server.shutdown(0);
        process.exit(0);
    };
    process.on("SIGTERM", shutdown);
    process.on("SIGINT", shutdown);
}

main().catch((err) => {
    process.stderr.write(`server failed: ${err.stack || err}\n`);
    process.exit(1);
});
