// Package pgtest gives a test a PostgreSQL database of its own, created
// on the server SANDBOX_TEST_POSTGRES names (.ci/run starts one and sets
// it) and dropped when the test ends. Without a reachable server the test
// is skipped, and says how to provide one.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvURL names the variable holding the URL of a PostgreSQL database whose
// role may create databases.
const EnvURL = "SANDBOX_TEST_POSTGRES"

// DefaultURL is tried when EnvURL is unset: what .ci/run creates.
const DefaultURL = "postgres://sandbox:sandbox@127.0.0.1:5432/sandbox?sslmode=disable"

// Database creates a fresh database and returns its URL.
func Database(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("PostgreSQL test skipped: -short (make test-short) leaves out what needs a database server")
	}
	admin := os.Getenv(EnvURL)
	if admin == "" {
		admin = DefaultURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Skipf("no PostgreSQL at %s (%v): .ci/run starts one; elsewhere set %s to a database whose role may create databases",
			redact(admin), err, EnvURL)
	}
	defer conn.Close(ctx)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "sandbox_test_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if c, err := pgx.Connect(ctx, admin); err == nil {
			_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			c.Close(ctx)
		}
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("%s: %v", EnvURL, err)
	}
	u.Path = "/" + name
	return u.String()
}

func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
