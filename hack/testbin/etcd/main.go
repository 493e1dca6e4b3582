// Command etcd is the upstream etcd server, built at the version pinned in go.mod.
// It mirrors go.etcd.io/etcd/server/v3/main.go.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
