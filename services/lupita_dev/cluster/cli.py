"""``lupita cluster up|down|status|tools``: the local Kubernetes cluster the chart is installed into."""

from __future__ import annotations

import argparse
import json

from . import manager, tools


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--real-node", action="store_true",
                        help="with `up`: also start the real node (containerd + kubelet + kube-proxy) that runs the images")
    parser.add_argument("--image", action="append", dest="images", metavar="NAME",
                        help="with `images`/`load`: only this image (repeatable; default: all)")
    parser.add_argument("--json", action="store_true", help="machine-readable status")
    parser.add_argument("--all", action="store_true",
                        help="with `tools`: also the real node's kubelet and kube-proxy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("up", "down", "status", "tools", "prebuild", "images", "load",
                                           "kubeconfig", "kubectl", "helm"),
                        help="up/down/status: the cluster; tools: build the cached binaries only "
                             "(helm, kwok, etcd, Kubernetes); prebuild: everything the chart and cluster "
                             "tests need (tools --all, promtool, Prometheus, images), what CI builds in "
                             "the background; images: build the service images with "
                             "podman; load: copy the built images into the real node; kubeconfig: "
                             "print its path; kubectl/helm ARGS: run the cached kubectl or helm "
                             "against the cluster")
    _add_options(parser)
    # everything after the action: kubectl's/helm's own arguments, or this command's options
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.action in ("kubectl", "helm"):
        import os

        binary = str(tools.ensure(args.action))
        os.environ["KUBECONFIG"] = str(manager.kubeconfig_path())
        os.execv(binary, [binary, *args.rest])
    if args.rest:
        options = argparse.ArgumentParser(prog=f"lupita cluster {args.action}")
        _add_options(options)
        options.parse_args(args.rest, namespace=args)
    if args.action == "tools":
        names = tools.TOOLS if args.all else manager.KWOK_CLUSTER_TOOLS
        for name, path in tools.ensure_all(names).items():
            print(f"{name:<24} {path}")
        return 0
    if args.action == "prebuild":
        from . import prebuild

        return prebuild.main()
    if args.action == "images":
        from . import images

        for result in images.build(tuple(args.images or ())):
            print(f"{result.image:<44} {result.size_bytes / 1e6:>7.0f} MB  built in {result.seconds:.0f}s")
        return 0
    if args.action == "kubeconfig":
        print(manager.kubeconfig_path())
        return 0
    if args.action == "down":
        stopped = manager.down()
        print(f"[cluster] stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    if args.action == "load":
        from . import images, node

        node.load_images([images.IMAGES[n].ref for n in (args.images or [i.name for i in images.SERVICES])])
        return 0
    if args.action == "up":
        manager.up()
        if args.real_node:
            from . import node

            node.up()
    from . import node

    st = manager.status()
    node_st = node.status()
    if any(s["pid"] for s in node_st.values()):
        st.update(node_st)
    if args.json:
        print(json.dumps({"processes": st, "kubeconfig": str(manager.kubeconfig_path())}, indent=2))
    else:
        for name, s in st.items():
            state = "healthy" if s["healthy"] else "DOWN"
            where = f"127.0.0.1:{s['port']}" if s["port"] else "-"
            print(f"{name:<24} {state:<8} {where:<16} pid {s['pid'] or '-'}")
        routes = manager._routes_for(manager.SERVICE_CIDR)
        print(f"service range {manager.SERVICE_CIDR}: {'; '.join(routes) or 'no route'}")
        print(f"kubeconfig: {manager.kubeconfig_path()}")
    return 0 if all(s["healthy"] for s in st.values()) else 1
