"""scripts/make_rank_table.py: generate, merge, check and inspect Ascend rank tables."""
import copy
import json

import pytest

from scripts.make_rank_table import check_table, local_server, main, parse_devices
from src.errors import UserError


def _write_hccn(path, last_octet, devices=range(8)):
    lines = ["# device NIC addresses"]
    for d in devices:
        lines += [f"address_{d}=192.98.{90 + d}.{last_octet}", f"netmask_{d}=255.255.255.0"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _make(tmp_path, capsys, name, server_ip, last_octet, devices="0-7"):
    hccn = _write_hccn(tmp_path / f"{name}.conf", last_octet)
    out = tmp_path / f"{name}.json"
    assert main(["--devices", devices, "--server_ip", server_ip, "--hccn", str(hccn), "-o", str(out)]) == 0
    capsys.readouterr()
    return out


@pytest.fixture
def cluster(tmp_path, capsys):
    """A merged two-server table (8 cards each) and its path."""
    a = _make(tmp_path, capsys, "a", "10.0.0.1", 1)
    b = _make(tmp_path, capsys, "b", "10.0.0.2", 2)
    out = tmp_path / "cluster.json"
    assert main(["--merge", str(a), str(b), "-o", str(out)]) == 0
    capsys.readouterr()
    return json.loads(out.read_text()), out


def test_parse_devices_accepts_ranges_and_lists():
    assert parse_devices("0-7") == list(range(8))
    assert parse_devices("6,0-2") == [0, 1, 2, 6]
    assert parse_devices("4") == [4]


@pytest.mark.parametrize("spec, words", [
    ("0-16", "0..15"), ("3-1", "backwards"), ("0,1,1", "more than once"), ("0-a", "not a device id"),
])
def test_parse_devices_rejects_bad_specs(spec, words):
    with pytest.raises(UserError, match=words):
        parse_devices(spec)


def test_one_server_table_from_hccn(tmp_path, capsys):
    hccn = _write_hccn(tmp_path / "hccn.conf", 7, devices=range(4))
    out = tmp_path / "t.json"
    assert main(["--devices", "0,1", "--server_ip", "10.1.2.3", "--hccn", str(hccn), "-o", str(out)]) == 0
    assert "2 ranks" in capsys.readouterr().out
    assert json.loads(out.read_text()) == {
        "version": "1.0",
        "server_count": "1",
        "server_list": [{
            "server_id": "10.1.2.3",
            "device": [
                {"device_id": "0", "device_ip": "192.98.90.7", "rank_id": "0"},
                {"device_id": "1", "device_ip": "192.98.91.7", "rank_id": "1"},
            ],
            "host_nic_ip": "reserve",
        }],
        "status": "completed",
    }


def test_device_missing_from_hccn_is_a_user_error(tmp_path, capsys):
    hccn = _write_hccn(tmp_path / "hccn.conf", 7, devices=range(4))
    out = tmp_path / "t.json"
    assert main(["--devices", "0-5", "--server_ip", "10.1.2.3", "--hccn", str(hccn), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "hccn.conf" in err and "[4, 5]" in err
    assert not out.exists()


def test_merge_numbers_ranks_in_server_order(cluster, capsys):
    table, path = cluster
    assert table["server_count"] == "2"
    assert [s["server_id"] for s in table["server_list"]] == ["10.0.0.1", "10.0.0.2"]
    second = table["server_list"][1]["device"]
    assert [d["rank_id"] for d in second] == [str(r) for r in range(8, 16)]
    assert [d["device_id"] for d in second] == [str(d) for d in range(8)]
    assert second[3]["device_ip"] == "192.98.93.2"
    assert main(["--check", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: ok (2 server(s), 16 ranks)"


def test_merge_in_other_order_puts_that_server_first(tmp_path, capsys):
    a = _make(tmp_path, capsys, "a", "10.0.0.1", 1, devices="0-1")
    b = _make(tmp_path, capsys, "b", "10.0.0.2", 2, devices="4-5")
    out = tmp_path / "ba.json"
    assert main(["--merge", str(b), str(a), "-o", str(out)]) == 0
    table = json.loads(out.read_text())
    ranks = [(s["server_id"], d["device_id"], d["rank_id"]) for s in table["server_list"] for d in s["device"]]
    assert ranks == [("10.0.0.2", "4", "0"), ("10.0.0.2", "5", "1"), ("10.0.0.1", "0", "2"), ("10.0.0.1", "1", "3")]


def test_merging_a_faulty_table_names_the_fault(cluster, tmp_path, capsys):
    table, path = cluster
    broken = copy.deepcopy(table)
    broken["status"] = "initializing"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken))
    assert main(["--merge", str(path), str(bad), "-o", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "bad.json is not a valid rank table: status is 'initializing'" in err and "--check" in err


def _set(path, value):
    def change(table):
        *parents, last = path
        node = table
        for key in parents:
            node = node[key]
        node[last] = value
    return change


def _delete(path):
    def change(table):
        *parents, last = path
        node = table
        for key in parents:
            node = node[key]
        del node[last]
    return change


FAULTS = {
    "duplicate rank": (_set(["server_list", 1, "device", 0, "rank_id"], "3"),
                       ["server_list[1].device[0].rank_id 3 repeats server_list[0].device[3]",
                        "rank ids must be contiguous 0..15: missing [8]"]),
    "gap in ranks": (_set(["server_list", 1, "device", 7, "rank_id"], "20"),
                     ["rank ids must be contiguous 0..15: missing [15]; unexpected [20]"]),
    "device id out of range": (_set(["server_list", 0, "device", 2, "device_id"], "16"),
                               ["server_list[0].device[2].device_id is 16; device ids are 0..15"]),
    "duplicate device id": (_set(["server_list", 0, "device", 2, "device_id"], "1"),
                            ["server_list[0].device[2].device_id 1 repeats server_list[0].device[1]"]),
    "malformed device ip": (_set(["server_list", 0, "device", 4, "device_ip"], "192.98.94"),
                            ["server_list[0].device[4].device_ip '192.98.94' is not an IP address "
                             "(see /etc/hccn.conf)"]),
    "missing device ip": (_delete(["server_list", 1, "device", 5, "device_ip"]),
                          ["server_list[1].device[5] is missing 'device_ip'"]),
    "duplicate device ip": (_set(["server_list", 1, "device", 0, "device_ip"], "192.98.90.1"),
                            ["server_list[1].device[0].device_ip 192.98.90.1 is also used by "
                             "server_list[0].device[0]"]),
    "server count": (_set(["server_count"], "3"), ["server_count is 3 but server_list has 2 servers"]),
    "missing status": (_delete(["status"]), ["missing key 'status'"]),
    "unfinished": (_set(["status"], "initializing"),
                   ["status is 'initializing'; expected 'completed' (HCCL only uses finished tables)"]),
    "version": (_set(["version"], "2.0"), ["version is '2.0'; expected '1.0'"]),
    "number not string": (_set(["server_list", 0, "device", 0, "rank_id"], 0),
                          ["server_list[0].device[0].rank_id is the number 0; write it as the string \"0\""]),
    "duplicate server": (_set(["server_list", 1, "server_id"], "10.0.0.1"),
                         ["server_list[1] repeats server_id 10.0.0.1 of server_list[0]"]),
    "empty device list": (_set(["server_list", 1, "device"], []),
                          ["server_list[1] (10.0.0.2) needs a non-empty device list"]),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_check_names_each_fault_in_one_line(cluster, tmp_path, capsys, fault):
    table, _ = cluster
    change, expected = FAULTS[fault]
    broken = copy.deepcopy(table)
    change(broken)
    assert check_table(broken) == expected
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    assert main(["--check", str(path)]) == 1
    assert capsys.readouterr().out.splitlines() == [f"{path}: {line}" for line in expected]


def test_check_reports_invalid_json(tmp_path, capsys):
    path = tmp_path / "t.json"
    path.write_text('{"version": "1.0",')
    assert main(["--check", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: not valid JSON:") and "line 1" in out and len(out.splitlines()) == 1


def test_check_of_missing_file_is_a_user_error(tmp_path, capsys):
    assert main(["--check", str(tmp_path / "absent.json")]) == 2
    assert "cannot read rank table" in capsys.readouterr().err


def test_local_server_by_index_id_or_host_address(cluster):
    table, _ = cluster
    assert local_server(table, "1")[0] == 1
    assert local_server(table, "10.0.0.1")[0] == 0
    assert local_server(table, None, ["172.17.0.1", "10.0.0.2"])[0] == 1
    with pytest.raises(UserError, match="set SERVER_ID"):
        local_server(table, None, ["172.17.0.1"])
    with pytest.raises(UserError, match="SERVER_ID=2 is neither"):
        local_server(table, "2")


def test_local_lists_this_servers_ranks(cluster, capsys):
    _, path = cluster
    assert main(["--local", str(path), "--server_id", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["rank_size 16", "server 1 10.0.0.2"]
    assert lines[2:] == [f"rank {8 + d} {d} {d}" for d in range(8)]


def _one_server(devices, with_ip=True, server_ip="10.0.0.1"):
    device_list = [{"device_id": str(d), "rank_id": str(r), **({"device_ip": f"192.98.{90 + d}.1"} if with_ip else {})}
                   for r, d in enumerate(devices)]
    return {"version": "1.0", "server_count": "1", "status": "completed",
            "server_list": [{"server_id": server_ip, "device": device_list}]}


def test_device_ip_is_optional_in_a_one_server_table(cluster):
    assert check_table(_one_server(range(8), with_ip=False)) == []
    table, _ = cluster
    broken = copy.deepcopy(table)
    del broken["server_list"][0]["device"][1]["device_ip"]
    assert check_table(broken) == ["server_list[0].device[1] is missing 'device_ip'"]


def test_ipv6_addresses_are_accepted(tmp_path, capsys):
    table = _one_server(range(2), server_ip="fd00::1")
    table["server_list"][0]["device"][0]["device_ip"] = "fd00:98::90"
    assert check_table(table) == []
    hccn = tmp_path / "hccn.conf"
    hccn.write_text("address_0=fd00:98::90\naddress_1=fd00:98::91\n")
    out = tmp_path / "t.json"
    assert main(["--visible_devices", "0,1", "--server_ip", "fd00::1", "--hccn", str(hccn), "-o", str(out)]) == 0
    assert json.loads(out.read_text())["server_list"][0]["device"][1]["device_ip"] == "fd00:98::91"


@pytest.mark.parametrize("devices, fault", [
    ([0, 1, 2, 3], None), ([4, 5], None), ([0, 1, 2, 3, 4, 5, 6, 7], None), ([6], None),
    ([2, 3, 4, 5], "uses cards 2,3,4,5 across the HCCS groups 0-3 and 4-7"),
    ([3, 4], "uses cards 3,4 across the HCCS groups"),
    ([0, 1, 2], "uses 3 cards (0,1,2); an Atlas 800 server takes 1, 2, 4 or 8"),
])
def test_atlas800_card_groups(devices, fault):
    faults = check_table(_one_server(devices))
    if fault is None:
        assert faults == []
    else:
        assert len(faults) == 1 and fault in faults[0] and "--card_groups none" in faults[0]
        assert check_table(_one_server(devices), card_groups="none") == []


def test_merge_keeps_super_pods(tmp_path, capsys):
    tables = []
    for s in range(2):
        table = _one_server(range(8), server_ip=f"10.0.0.{s + 1}")
        table["version"] = "1.2"
        table["super_pod_list"] = [{"super_pod_id": "0", "server_list": [{"server_id": f"10.0.0.{s + 1}"}]}]
        table["server_list"][0]["device"] = [dict(d, device_ip=f"192.98.{90 + i}.{s + 1}")
                                             for i, d in enumerate(table["server_list"][0]["device"])]
        path = tmp_path / f"s{s}.json"
        path.write_text(json.dumps(table))
        tables.append(str(path))
    out = tmp_path / "merged.json"
    assert main(["--merge", *tables, "-o", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert merged["super_pod_list"] == [{"super_pod_id": "0", "server_list": [{"server_id": "10.0.0.1"},
                                                                              {"server_id": "10.0.0.2"}]}]


def test_local_prints_logical_and_physical_ids(tmp_path, capsys):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_one_server([4, 5, 6, 7])))
    assert main(["--local", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[2:] == [f"rank {r} {r} {4 + r}" for r in range(4)]
