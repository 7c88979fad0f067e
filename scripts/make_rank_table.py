"""Ascend rank tables (HCCL, schema version "1.0"): generate, merge, check, and list one server's ranks.

    python scripts/make_rank_table.py --devices 0-7 --server_ip 10.0.0.1 [--hccn /etc/hccn.conf] [-o table.json]
    python scripts/make_rank_table.py --visible_devices 0,1,2,3 ...     (hccl_tools.py's spelling of --devices)
    python scripts/make_rank_table.py --merge server0.json server1.json -o cluster.json
    python scripts/make_rank_table.py --check cluster.json
    python scripts/make_rank_table.py --local cluster.json [--server_id 1] [--host_ips "10.0.0.2 ..."]

A generated table lists one server (`server_id` = its host IP) and its cards: the physical `device_id`, the card's
NIC address `device_ip` (the `address_<device>=<ip>` lines of /etc/hccn.conf) and a global `rank_id`. All values are
strings. `--merge` joins one table per server into a cluster table, numbering ranks 0..N-1 in server order.
`--merge` keeps the servers' `super_pod_list` entries (version 1.2 tables). `--check` prints one line per fault and
exits 1 when there is any; `device_ip` may be left out of a one-server table (recent CANN versions find the cards
without it), addresses may be IPv4 or IPv6, and on 8-card Atlas 800 (Ascend 910) servers a server's cards must be 1,
2, 4 or 8 of them, 2 or 4 within one HCCS group (0-3 or 4-7); `--card_groups none` skips that rule for servers whose
cards are all connected (Atlas 800T A2 and later). `--local` is what run_distribute_train.sh uses: it checks the table,
picks this host's server and prints `rank_size N`, `server INDEX SERVER_ID` and one `rank RANK_ID LOGICAL PHYSICAL`
line per card of that server, where LOGICAL is the card's index among this server's cards in device-id order: the
DEVICE_ID a rank uses, as in the model zoo's launchers (inside a container that maps the cards of the table to 0..n-1,
the physical id would be wrong). Only the standard library (and src.errors) is needed.
"""
import argparse
import ipaddress
import json
import os
import re
import socket
import sys

if __package__ in (None, ""):  # run as a script: make the repository's `src` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.errors import UserError  # noqa: E402

TABLE_VERSION = "1.0"
READABLE_VERSIONS = ("1.0", "1.2")
MAX_DEVICE_ID = 15
DEFAULT_HCCN = "/etc/hccn.conf"
_HCCN_LINE = re.compile(r"^address_(\d+)\s*=\s*(\S+)$")
_TOP_KEYS = ("version", "server_count", "server_list", "status")
_DEVICE_KEYS = ("device_id", "device_ip", "rank_id")
_REQUIRED_DEVICE_KEYS = ("device_id", "rank_id")   # device_ip too when the table has more than one server
CARD_GROUPS = ("atlas800", "none")
_ATLAS800_GROUPS = (frozenset(range(4)), frozenset(range(4, 8)))


def parse_devices(spec):
    """Sorted device ids from "0-7", "0,1,2,3" or "0-3,6"; each in 0..15, no repeats."""
    devices = []
    for part in spec.replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise UserError(f"--devices {spec!r}: {part!r} is not a device id or range; write e.g. 0-7 or 0,1,4,5")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if first > last:
            raise UserError(f"--devices {spec!r}: range {part} runs backwards; write {last}-{first}")
        devices.extend(range(first, last + 1))
    out_of_range = sorted({d for d in devices if d > MAX_DEVICE_ID})
    if out_of_range:
        raise UserError(f"--devices {spec!r}: device ids must be 0..{MAX_DEVICE_ID}, got {out_of_range}")
    repeated = sorted({d for d in devices if devices.count(d) > 1})
    if repeated:
        raise UserError(f"--devices {spec!r}: devices {repeated} are listed more than once")
    return sorted(devices)


def read_hccn(path):
    """{device id: NIC ip} from the `address_<device>=<ip>` lines of an hccn.conf file (other lines are ignored)."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}; pass the device NIC file with --hccn FILE") from None
    addresses = {}
    for number, line in enumerate(lines, start=1):
        match = _HCCN_LINE.match(line.strip())
        if not match:
            continue
        device, ip = int(match.group(1)), match.group(2)
        if not _is_ip(ip):
            raise UserError(f"{path}:{number}: {ip!r} is not an IP address; fix the address_{device}= line")
        addresses[device] = ip
    return addresses


def build_table(devices, server_ip, addresses, hccn_path=DEFAULT_HCCN):
    """A one-server rank table for `devices`, ranks 0..len-1 in device order."""
    missing = [d for d in devices if d not in addresses]
    if missing:
        raise UserError(
            f"{hccn_path} has no address_<id>= line for devices {missing}; "
            f"read each card's IP with `hccn_tool -i <id> -ip -g` and add it, or choose other --devices"
        )
    device_list = [
        {"device_id": str(d), "device_ip": addresses[d], "rank_id": str(rank)} for rank, d in enumerate(devices)
    ]
    return {
        "version": TABLE_VERSION,
        "server_count": "1",
        "server_list": [{"server_id": server_ip, "device": device_list, "host_nic_ip": "reserve"}],
        "status": "completed",
    }


def merge_tables(tables):
    """One cluster table from per-server `tables` (each already valid), ranks renumbered 0..N-1 in server order."""
    versions = sorted({table["version"] for table in tables})
    if len(versions) > 1:
        raise UserError(f"the tables have different versions {versions}; merge tables of one version")
    servers, seen = [], set()
    for table in tables:
        for server in table["server_list"]:
            if server["server_id"] in seen:
                raise UserError(f"server {server['server_id']} appears in more than one table; merge each server once")
            seen.add(server["server_id"])
            servers.append(dict(server, device=sorted(server["device"], key=lambda d: int(d["rank_id"]))))
    rank = 0
    for server in servers:
        server["device"] = [dict(device, rank_id=str(rank + i)) for i, device in enumerate(server["device"])]
        rank += len(server["device"])
    merged = {"version": versions[0], "server_count": str(len(servers)), "server_list": servers,
              "status": "completed"}
    pods = {}
    for table in tables:   # version 1.2: super pods, each listing its servers; pods of one id are joined
        for pod in table.get("super_pod_list", []):
            entry = pods.setdefault(pod["super_pod_id"], dict(pod, server_list=[]))
            entry["server_list"].extend(pod.get("server_list", []))
    if pods:
        merged["super_pod_list"] = list(pods.values())
    return merged


def check_table(table, card_groups="atlas800"):
    """Every fault of a parsed rank table, one readable line each (empty when the table is fine).

    `card_groups` "atlas800" also checks each 8-card server's cards against the Atlas 800 (Ascend 910) HCCS groups;
    "none" skips that rule."""
    if not isinstance(table, dict):
        return ["the table must be a JSON object with keys " + ", ".join(_TOP_KEYS)]
    faults = [f"missing key {key!r}" for key in _TOP_KEYS if key not in table]
    if "version" in table and table["version"] not in READABLE_VERSIONS:
        faults.append(f"version is {table['version']!r}; expected {TABLE_VERSION!r}")
    if "status" in table and table["status"] != "completed":
        faults.append(f"status is {table['status']!r}; expected 'completed' (HCCL only uses finished tables)")
    servers = table.get("server_list")
    if "server_list" in table and (not isinstance(servers, list) or not servers):
        faults.append("server_list must be a non-empty list of servers")
        servers = []
    servers = servers or []
    if "server_count" in table:
        count = _string_int(table["server_count"], "server_count", faults)
        if count is not None and count != len(servers):
            faults.append(f"server_count is {count} but server_list has {len(servers)} servers")
    ranks = _check_servers(servers, faults)
    if card_groups == "atlas800":
        faults.extend(_card_group_faults(servers))
    if ranks:
        faults.extend(_rank_faults(ranks))
    return faults


def load_table(path):
    """The parsed JSON of `path`; a missing or unparsable file is a UserError."""
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {_json_fault(exc)}") from None


def load_valid_table(path, card_groups="atlas800"):
    """The table at `path`, which must pass `check_table` (else a UserError naming its first fault)."""
    table = load_table(path)
    faults = check_table(table, card_groups)
    if faults:
        raise UserError(
            f"{path} is not a valid rank table: {faults[0]}"
            + (f" (and {len(faults) - 1} more faults)" if len(faults) > 1 else "")
            + f"; run `python scripts/make_rank_table.py --check {path} --card_groups {card_groups}` to list them"
        )
    return table


def local_server(table, server_id=None, host_ips=()):
    """(index, server) of this host in a valid `table`.

    `server_id` (e.g. the SERVER_ID variable) is a server's `server_id` or its index in server_list. Without it the
    server whose `server_id` is one of `host_ips` is chosen; a one-server table needs neither.
    """
    servers = table["server_list"]
    names = [s["server_id"] for s in servers]
    if server_id not in (None, ""):
        if server_id in names:
            return names.index(server_id), servers[names.index(server_id)]
        if server_id.isdigit() and int(server_id) < len(servers):
            return int(server_id), servers[int(server_id)]
        raise UserError(
            f"SERVER_ID={server_id} is neither a server index (0..{len(servers) - 1}) "
            f"nor a server_id of the table ({', '.join(names)})"
        )
    matches = [i for i, name in enumerate(names) if name in host_ips]
    if len(matches) == 1:
        return matches[0], servers[matches[0]]
    if len(servers) == 1:
        return 0, servers[0]
    host = ", ".join(host_ips) or "none found"
    raise UserError(
        f"cannot tell which server of the table this host is: its addresses ({host}) match "
        f"{'several' if matches else 'none'} of the server_ids ({', '.join(names)}); "
        f"set SERVER_ID to this server's index (0..{len(servers) - 1}) or server_id"
    )


def rank_size(table):
    """Number of ranks (cards) in a valid table."""
    return sum(len(server["device"]) for server in table["server_list"])


def main(argv=None):
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="make_rank_table.py", description="Generate, merge, check or inspect Ascend rank tables (version 1.0)."
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--devices", "--visible_devices", dest="devices", metavar="IDS",
                      help="generate a one-server table for these cards, e.g. 0-7 or 0,1,2,3")
    mode.add_argument("--merge", nargs="+", metavar="TABLE", help="join per-server tables, in this order")
    mode.add_argument("--check", metavar="TABLE", help="list the table's faults; exit 1 when there are any")
    mode.add_argument("--local", metavar="TABLE", help="print this server's ranks (used by run_distribute_train.sh)")
    parser.add_argument("--server_ip", help="with --devices: this host's IP (default: the address of its hostname)")
    parser.add_argument("--hccn", default=DEFAULT_HCCN, metavar="FILE",
                        help=f"with --devices: device NIC addresses (default {DEFAULT_HCCN})")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="with --devices/--merge: where to write (default: a descriptive name in the cwd)")
    parser.add_argument("--server_id", default="", help="with --local: this server's index or server_id")
    parser.add_argument("--host_ips", default="", help="with --local: this host's addresses, space-separated")
    parser.add_argument("--card_groups", default="atlas800", choices=CARD_GROUPS,
                        help="with --check/--local/--merge: check Atlas 800 HCCS card groups (default) or not")
    args = parser.parse_args(argv)
    try:
        if args.check:
            return _run_check(args.check, args.card_groups)
        if args.local:
            table = load_valid_table(args.local, args.card_groups)
            index, server = local_server(table, args.server_id, args.host_ips.split())
            print(f"rank_size {rank_size(table)}")
            print(f"server {index} {server['server_id']}")
            by_id = sorted(server["device"], key=lambda d: int(d["device_id"]))
            logical = {d["device_id"]: i for i, d in enumerate(by_id)}
            for device in sorted(server["device"], key=lambda d: int(d["rank_id"])):
                print(f"rank {device['rank_id']} {logical[device['device_id']]} {device['device_id']}")
            return 0
        if args.devices:
            devices = parse_devices(args.devices)
            server_ip = args.server_ip or _host_ip()
            if not _is_ip(server_ip):
                raise UserError(f"--server_ip {server_ip!r} is not an IP address")
            table = build_table(devices, server_ip, read_hccn(args.hccn), args.hccn)
            default_name = f"rank_table_{len(devices)}p_{server_ip}.json"
        else:
            table = merge_tables([load_valid_table(path, args.card_groups) for path in args.merge])
            default_name = f"rank_table_{table['server_count']}s_{rank_size(table)}p.json"
        output = args.output or default_name
        _write_json(table, output)
        print(f"wrote {output} ({table['server_count']} server(s), {rank_size(table)} ranks)")
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run_check(path, card_groups="atlas800"):
    """Print each fault of the table at `path` (or one "ok" line); 1 when faulty, else 0."""
    text = _read_text(path)
    try:
        table = json.loads(text)
        faults = check_table(table, card_groups)
    except json.JSONDecodeError as exc:
        faults = [f"not valid JSON: {_json_fault(exc)}"]
    for fault in faults:
        print(f"{path}: {fault}")
    if faults:
        return 1
    print(f"{path}: ok ({table['server_count']} server(s), {rank_size(table)} ranks)")
    return 0


def _read_text(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise UserError(f"cannot read rank table {path}: {exc.strerror}") from None


def _json_fault(exc):
    return f"{exc.msg} at line {exc.lineno}, column {exc.colno}"


def _check_servers(servers, faults):
    """Check each server and its devices (appending to `faults`); return [(rank, where)] of readable rank ids."""
    ranks, server_ids, device_ips = [], {}, {}
    for s, server in enumerate(servers):
        where = f"server_list[{s}]"
        if not isinstance(server, dict):
            faults.append(f"{where} must be an object with server_id and device")
            continue
        server_id = server.get("server_id")
        if server_id in (None, ""):
            faults.append(f"{where} has no server_id (the host's IP)")
        elif server_id in server_ids:
            faults.append(f"{where} repeats server_id {server_id} of server_list[{server_ids[server_id]}]")
        else:
            server_ids[server_id] = s
        devices = server.get("device")
        if not isinstance(devices, list) or not devices:
            faults.append(f"{where} ({server_id}) needs a non-empty device list")
            continue
        device_ids = {}
        for d, device in enumerate(devices):
            at = f"{where}.device[{d}]"
            if not isinstance(device, dict):
                faults.append(f"{at} must be an object with {', '.join(_DEVICE_KEYS)}")
                continue
            required = _DEVICE_KEYS if len(servers) > 1 else _REQUIRED_DEVICE_KEYS
            faults.extend(f"{at} is missing {key!r}" for key in required if key not in device)
            if "device_id" in device:
                device_id = _string_int(device["device_id"], f"{at}.device_id", faults)
                if device_id is None:
                    pass
                elif not 0 <= device_id <= MAX_DEVICE_ID:
                    faults.append(f"{at}.device_id is {device_id}; device ids are 0..{MAX_DEVICE_ID}")
                elif device_id in device_ids:
                    faults.append(f"{at}.device_id {device_id} repeats {where}.device[{device_ids[device_id]}]")
                else:
                    device_ids[device_id] = d
            if "device_ip" in device:
                ip = device["device_ip"]
                if not isinstance(ip, str) or not _is_ip(ip):
                    faults.append(f"{at}.device_ip {ip!r} is not an IP address (see /etc/hccn.conf)")
                elif ip in device_ips:
                    faults.append(f"{at}.device_ip {ip} is also used by {device_ips[ip]}")
                else:
                    device_ips[ip] = at
            if "rank_id" in device:
                rank = _string_int(device["rank_id"], f"{at}.rank_id", faults)
                if rank is not None:
                    ranks.append((rank, at))
    return ranks


def _card_group_faults(servers):
    """Atlas 800 (8 x Ascend 910, two HCCS groups 0-3 and 4-7): a server uses 1, 2, 4 or 8 cards, and 2 or 4 cards
    lie in one group. Servers with a card id above 7 (16-card machines) are not checked."""
    faults = []
    for s, server in enumerate(servers):
        devices = server.get("device") if isinstance(server, dict) else None
        if not isinstance(devices, list):
            continue
        ids = {int(d["device_id"]) for d in devices if isinstance(d, dict) and str(d.get("device_id", "")).isdigit()}
        if len(ids) != len(devices) or not ids or max(ids) > 7:
            continue
        listed = ",".join(str(i) for i in sorted(ids))
        if len(ids) not in (1, 2, 4, 8):
            faults.append(f"server_list[{s}] uses {len(ids)} cards ({listed}); an Atlas 800 server takes 1, 2, 4 or "
                          "8 (or pass --card_groups none for fully connected servers such as Atlas 800T A2)")
        elif len(ids) in (2, 4) and not any(ids <= group for group in _ATLAS800_GROUPS):
            faults.append(f"server_list[{s}] uses cards {listed} across the HCCS groups 0-3 and 4-7; on an Atlas 800 "
                          f"{len(ids)} cards must lie in one group (or pass --card_groups none for fully connected "
                          "servers such as Atlas 800T A2)")
    return faults


def _rank_faults(ranks):
    """Faults of the rank numbering: each rank id once, together 0..N-1."""
    faults, first_seen = [], {}
    for rank, at in ranks:
        if rank in first_seen:
            faults.append(f"{at}.rank_id {rank} repeats {first_seen[rank]}")
        else:
            first_seen[rank] = at
    expected = set(range(len(ranks)))
    missing, extra = sorted(expected - first_seen.keys()), sorted(first_seen.keys() - expected)
    if missing or extra:
        detail = "; ".join(part for part in (
            f"missing {missing}" if missing else "",
            f"unexpected {extra}" if extra else "",
        ) if part)
        faults.append(f"rank ids must be contiguous 0..{len(ranks) - 1}: {detail}")
    return faults


def _string_int(value, where, faults):
    """The integer in a string field such as "3" (appending a fault and returning None otherwise)."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        faults.append(f"{where} is the number {value}; write it as the string \"{value}\"")
        return value
    faults.append(f"{where} is {value!r}; expected a non-negative integer as a string, e.g. \"0\"")
    return None


def _is_ip(text):
    """True for an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _host_ip():
    address = socket.gethostbyname(socket.gethostname())
    if address.startswith("127."):
        raise UserError(f"this host's name resolves to {address}; pass its network address with --server_ip")
    return address


def _write_json(table, path):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(table, handle, indent=4)
        handle.write("\n")


if __name__ == "__main__":
    sys.exit(main())
