"""The ciao scripts hold to one ciao: commit 194264a of ciao-project/ciao (2018-01-08, its
last). tests/fixtures/ciao-194264a.json lists, read from that commit's source, each
program's flags, the ciao and ciao-deploy commands with their arguments, the structures
the ciao CLI's -f templates are given, and demo.sh's variables. Every ciao script is
rendered and every invocation of a ciao program in it is checked against the fixture:
an unknown program, subcommand, flag, argument count, template field or CIAO_ variable
fails the test. No network, no ciao build: the facts are in the fixture."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import pytest
import yaml

from ccloudvm.cluster.network import ACTIONS
from tests.unit.test_cluster_templates import REPO, render

FIXTURE = json.loads((REPO / "tests" / "fixtures" / "ciao-194264a.json").read_text())
PROGRAMS: dict[str, Any] = FIXTURE["programs"]
SCRIPTS = [f"cluster/ciao/{action}.sh.j2" for action in ACTIONS]

# Words after which a word is a command (and so may be a ciao program).
INTRODUCERS = {
    None,
    ";",
    "&&",
    "||",
    "|",
    "(",
    "$",
    "!",
    "then",
    "do",
    "else",
    "if",
    "while",
    "until",
    "exec",
    "as_user",
    "as_admin",
    "sudo",
    "env",
    "time",
    "timeout",
    "nohup",
    "setsid",
}
PROGRAM_NAME = re.compile(r"ciao(-[a-z]+)*|test-cases")
REDIRECT = re.compile(r"^[<>&|;()]+$")
FIELD = re.compile(r"\.([A-Z][A-Za-z0-9_]*)")
NAMED_FIELDS = re.compile(r"\b(?:filter|select|cols|sort)\s+\.((?:\s+\"[A-Za-z0-9_]+\")+)")


def substitutions(line: str) -> list[str]:
    """The commands inside the line's $( ... ), nested ones too (quotes hide them otherwise)."""
    found, starts = [], []
    i = 0
    while i < len(line):
        if line.startswith("$(", i):
            starts.append(i + 2)
            i += 2
            continue
        if line[i] == ")" and starts:
            found.append(line[starts.pop() : i])
        i += 1
    return found


def logical_lines(text: str) -> list[str]:
    """The script's lines with continuations joined and comment lines dropped, plus the
    commands of their command substitutions."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [line for line in joined.splitlines() if not line.lstrip().startswith("#")]
    return lines + [inner for line in lines for inner in substitutions(line)]


def tokens(line: str) -> list[str] | None:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        return list(lexer)
    except ValueError:  # a heredoc body or a Go template with quotes: no command here
        return None


def assignments(text: str) -> dict[str, str]:
    """Single-quoted shell variables (the scripts keep their Go templates in them)."""
    return dict(re.findall(r"^\s*([a-z_]+)='([^']*)'\s*$", text, re.M))


def invocations(text: str) -> list[tuple[str, list[str], str]]:
    """(program, its words, the line) for every command-position ciao program."""
    found = []
    for line in logical_lines(text):
        words = tokens(line)
        if not words:
            continue
        for i, word in enumerate(words):
            name = word.rsplit("/", 1)[-1]
            if "=" in word or not PROGRAM_NAME.fullmatch(name):
                continue
            before = words[i - 1] if i else None
            is_check = i >= 2 and words[i - 2] == "check"
            is_record = i >= 2 and words[i - 2] == "record" and before == "exec"
            if before not in INTRODUCERS and not is_check and not is_record:
                continue
            args = []
            for arg in words[i + 1 :]:
                if REDIRECT.match(arg):
                    break
                args.append(arg)
            # `2>&1`, `2>/dev/null`: the file descriptor number is not an argument.
            if args and args[-1].isdigit() and len(args) < len(words) - i - 1:
                args.pop()
            found.append((name, args, line))
    return found


def _flag(arg: str, known: dict[str, Any], shorts: dict[str, str]) -> tuple[str | None, bool]:
    """(the flag's long name or None if unknown, whether its value is in the next word)."""
    body = arg.lstrip("-")
    name, eq, _ = body.partition("=")
    if not arg.startswith("--") and name in shorts:
        name = shorts[name]
    if name not in known:
        return None, False
    return name, known[name]["type"] == "value" and not eq


def check_invocation(
    program: str, args: list[str], variables: dict[str, str]
) -> tuple[list[str], list[str]]:
    """(problems, the command path) of one invocation against the fixture."""
    spec = PROGRAMS.get(program)
    if spec is None:
        return [f"{program}: not a program of ciao 194264a"], []
    problems: list[str] = []
    if spec["style"] == "go-flag":
        words = iter(args)
        for arg in words:
            if arg.startswith("-") and arg not in ("-", "--"):
                name, takes_next = _flag(arg, spec["flags"], {})
                if name is None:
                    problems.append(f"{program}: no flag {arg}")
                elif takes_next:
                    next(words, None)
        return problems, [program]
    # cobra: subcommands, then the leaf's arguments; flags anywhere.
    node, path, positional, templates = spec, [program], 0, []
    inherited = {"help": {"type": "bool"}, **spec.get("persistent_flags", {})}
    words = iter(args)
    for arg in words:
        if arg.startswith("-") and arg not in ("-", "--"):
            known = {**inherited, **node.get("flags", {})}
            shorts = {v["short"]: k for k, v in known.items() if "short" in v}
            shorts["h"] = "help"
            name, takes_next = _flag(arg, known, shorts)
            if name is None:
                problems.append(f"{' '.join(path)}: no flag {arg}")
                continue
            value = next(words, "") if takes_next else arg.partition("=")[2]
            if name == "template":
                templates.append(value)
        elif "subcommands" in node:
            if arg not in node["subcommands"]:
                problems.append(f"{' '.join(path)}: no subcommand {arg!r}")
                return problems, path
            node = node["subcommands"][arg]
            path.append(arg)
        else:
            positional += 1
    if "subcommands" in node:
        problems.append(f"{' '.join(path)}: needs a subcommand ({', '.join(node['subcommands'])})")
        return problems, path
    low, high = node["args"]["min"], node["args"]["max"]
    if positional < low or (high is not None and positional > high):
        problems.append(
            f"{' '.join(path)}: {positional} arguments, {node['use']!r} takes "
            f"{low}{'' if high == low else '..' + ('' if high is None else str(high))}"
        )
    if program == "ciao":
        for template in templates:
            problems += check_template(" ".join(path[1:]), template, variables)
    return problems, path


def struct_fields(name: str, seen: set[str] | None = None) -> set[str]:
    """The fields of a structure and of the structures its fields hold."""
    structs = FIXTURE["templates"]["structs"]
    seen = seen or set()
    if name in seen or name not in structs:
        return set()
    seen.add(name)
    fields = set(structs[name]["fields"])
    for kind in structs[name]["fields"].values():
        fields |= struct_fields(re.split(r"[\].*]", kind)[-1], seen)
    return fields


def check_template(command: str, template: str, variables: dict[str, str]) -> list[str]:
    ref = re.fullmatch(r"\"?\$\{?([a-z_]+)\}?\"?", template)
    if ref:
        if ref.group(1) not in variables:
            return [f"ciao {command}: template variable ${ref.group(1)} is not a literal"]
        template = variables[ref.group(1)]
    spec = FIXTURE["templates"]["commands"].get(command)
    if spec is None:
        return [f"ciao {command}: no template structure known for this command"]
    allowed = struct_fields(spec["struct"])
    used = set(FIELD.findall(template))
    for group in NAMED_FIELDS.findall(template):
        used |= set(re.findall(r'"(\w+)"', group))
    return [
        f"ciao {command}: template field .{field} is not in {spec['struct']} ({spec['source']})"
        for field in sorted(used - allowed)
    ]


def allowed_variables() -> set[str]:
    demo = FIXTURE["demo_sh"]
    return (
        set(demo["variables"])
        | set(demo["read_by_cli"]["variables"])
        | set(demo["read_by_bat"]["variables"])
    )


def problems_in(text: str) -> list[str]:
    variables = assignments(text)
    problems = []
    for program, args, line in invocations(text):
        found, _ = check_invocation(program, args, variables)
        problems += [f"{p}    in: {line.strip()}" for p in found]
    for name in sorted(set(re.findall(r"\bCIAO_[A-Z_]+\b", text)) - allowed_variables()):
        problems.append(f"{name}: not a variable of ciao 194264a's demo.sh, CLI or BAT")
    return problems


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_ciao_script_holds_to_the_pinned_commit(name: str) -> None:
    assert problems_in(render(name)) == []


def test_the_scripts_do_use_ciao() -> None:
    """The checker sees the invocations (an empty list would prove nothing)."""
    seen = set()
    for name in SCRIPTS:
        text = render(name)
        for program, args, _ in invocations(text):
            _, path = check_invocation(program, args, assignments(text))
            seen.add(" ".join(path))
    for command in (
        "ciao-deploy setup",
        "ciao-deploy auth create",
        "ciao-deploy create-bat-workloads",
        "ciao-launcher",
        "ciao create instance",
        "ciao list instances",
        "ciao list workloads",
        "ciao show workload",
        "ciao list events",
        "ciao delete events",
        "ciao create pool",
        "ciao add external-ip",
        "ciao attach external-ip",
        "ciao detach external-ip",
        "ciao list external-ips",
        "ciao delete pool",
        "ciao delete instance",
        "test-cases",
    ):
        assert command in seen, command


def test_demo_sh_has_exactly_the_pinned_variables() -> None:
    setup = render("cluster/ciao/setup.sh.j2")
    body = setup[setup.index('ensure_file "$ciao_env_file" 0644 <<ENV') : setup.index("\nENV\n")]
    assert re.findall(r"^export (CIAO_\w+)=", body, re.M) == list(FIXTURE["demo_sh"]["variables"])


@pytest.mark.parametrize(
    ("snippet", "problem"),
    [
        ("ciao-controller --single --username=csr -v 3", "ciao-controller: no flag --single"),
        ("ciao-controller --httpskey=k.pem", "no flag --httpskey"),
        ("ciao-launcher --network=dual", None),  # a bool flag at HEAD: parses, value not checked
        ("ciao create workload --file w.yaml", "ciao create workload: no flag --file"),
        ("ciao create instance --workload X --instances 2", "ciao create instance: 0 arguments"),
        ("ciao create instance X Y", "ciao create instance: 2 arguments"),
        (
            "ciao list instances -f '{{range .}}{{.PrivateIP}}{{end}}'",
            ".PrivateIP is not in ServerDetails",
        ),
        ("ciao list workloads -f '{{select . \"VMType\"}}'", ".VMType is not in workload"),
        ("ciao-cli instance list", "ciao-cli: not a program"),
        ("ciao launch vm", "ciao: no subcommand 'launch'"),
        ("ciao list", "ciao list: needs a subcommand"),
        ("export CIAO_USERNAME=csr", "CIAO_USERNAME: not a variable"),
        ('x=$(ciao list events -f "{{(index . 0).Message}}")', None),
        ("as_admin ciao delete events", None),
        ('check "bat" test-cases -v -race ./base_bat', None),
        ('check "bat" test-cases -verbose ./base_bat', "test-cases: no flag -verbose"),
        (
            "ciao-deploy setup --local-launcher --cnci tiny --bogus",
            "ciao-deploy setup: no flag --bogus",
        ),
        ("ciao-deploy auth create", "ciao-deploy auth create: 0 arguments"),
    ],
)
def test_the_checker_catches_what_ciao_194264a_does_not_have(
    snippet: str, problem: str | None
) -> None:
    found = problems_in("#!/bin/bash\n" + snippet + "\n")
    if problem is None:
        assert found == []
    else:
        assert any(problem in p for p in found), found


def test_fixture_entries_name_their_source() -> None:
    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "type" in node or "use" in node or "fields" in node:
                assert node.get("source"), where
            for key, value in node.items():
                walk(value, f"{where}.{key}")

    assert FIXTURE["commit"].startswith("194264a")
    walk(FIXTURE["programs"], "programs")
    walk(FIXTURE["templates"]["structs"], "structs")
    for name, entry in FIXTURE["demo_sh"]["variables"].items():
        assert entry["source"], name


def test_the_workload_pins_the_same_commit() -> None:
    workload = yaml.safe_load((REPO / "templates" / "ciao.yaml").read_text())
    assert FIXTURE["commit"].startswith(workload["vars"]["ciao_commit"])
    assert len(workload["vars"]["ciao_commit"]) == 40


def test_the_pinned_build_is_gopath_mode() -> None:
    workload = (REPO / "templates" / "ciao.yaml").read_text()
    assert "GO111MODULE=off" in workload
    assert "go install -v --tags debug ./..." in workload
    assert FIXTURE["build"]["command"] == "go install -v --tags 'debug' ./..."


def test_network_defaults_are_singlevms() -> None:
    from ccloudvm.cluster.network import ClusterNetwork

    env = ClusterNetwork.from_mapping().as_env()
    facts = FIXTURE["singlevm"]
    assert (env["CLUSTER_BRIDGE"], env["CLUSTER_MACVLAN"]) == (facts["bridge"], facts["macvlan"])
    assert env["CLUSTER_GATEWAY"] == facts["gateway"] and env["CLUSTER_SUBNET"] == facts["subnet"]
    start, end, lease = facts["dhcp_range"].split(",")
    assert (env["CLUSTER_DHCP_START"], env["CLUSTER_DHCP_END"], env["CLUSTER_LEASE_TIME"]) == (
        start,
        end,
        lease,
    )
    # singlevm's dnsmasq served DNS on the gateway (port 53, its default): so does ours.
    assert env["CLUSTER_DNS_PORT"] == "53"
    assert ClusterNetwork.from_mapping({"dns": False}).as_env()["CLUSTER_DNS_PORT"] == "0"


def test_dns_binds_the_gateway_only() -> None:
    text = render("cluster/network-setup.sh.j2")
    for option in (
        '--interface="$macvlan"',
        "--except-interface=lo",
        "--bind-interfaces",
        '--listen-address="$gateway"',
        '"--dhcp-option=option:dns-server,$gateway"',
        '--port="$dns_port"',
    ):
        assert option in text, option
    assert "--listen-address=127" not in text and "--interface=lo" not in text
