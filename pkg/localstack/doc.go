// Package localstack starts and stops the real servers vigil depends on —
// Redis, PostgreSQL and NATS with JetStream — as private instances for the
// local dev stack and for tests, without Docker.
//
// Redis and PostgreSQL run as child processes of the calling program, each
// with its state under Options.Dir, bound to 127.0.0.1 only (they run without
// authentication). NATS is embedded (github.com/nats-io/nats-server/v2).
// Every Start function waits until the server answers, under the context's
// deadline (60 s when the context has none), and returns a handle whose Stop
// shuts the server down cleanly.
//
// The children get a parent-death signal on Linux, so they stop when the
// program that started them dies, even without calling Stop (a test binary
// killed by -timeout leaves no server behind).
//
// # Missing binaries
//
// redis-server is looked up on PATH; initdb and postgres on PATH, then in
// /usr/lib/postgresql/<version>/bin (highest version first). When one is
// missing, Start returns an error wrapping ErrMissingBinary that says how to
// install it (`make deps`, which runs deploy/scripts/deps.sh).
//
// # PostgreSQL and root
//
// PostgreSQL refuses to run as root. When the effective user is root,
// StartPostgres runs initdb and postgres as an unprivileged system user: the
// existing "postgres" user (the Debian package creates it), or else a
// "vigil-postgres" system user it creates with useradd. It switches user
// in-process (exec with syscall.Credential, no su/runuser needed), makes
// Options.Dir owned by that user, and makes sure the user can reach
// Options.Dir: a parent directory inside os.TempDir() that the user cannot
// search (such as the 0700 directories of t.TempDir) gets the search bit for
// others (o+x, not read); a parent elsewhere is left alone and
// StartPostgres fails with ErrDirNotReachable naming it.
//
// PostgreSQL is started as `postgres -D <Dir>/data -p <port> -k <Dir>
// -c listen_addresses=127.0.0.1` directly rather than through pg_ctl, so
// that it stays a child of the caller and gets the parent-death signal;
// Stop sends SIGINT, which is what `pg_ctl stop -m fast` sends.
package localstack
