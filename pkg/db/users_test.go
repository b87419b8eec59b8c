package db_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"vigil.dev/pkg/db"
	"vigil.dev/pkg/testenv"
)

// jsonEqual reports whether a and b hold the same JSON value.
func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("unmarshal %s: %v", a, err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("unmarshal %s: %v", b, err)
	}
	return reflect.DeepEqual(va, vb)
}

func TestSeedUserThenLookUp(t *testing.T) {
	ctx := testContext(t)
	users := db.NewUsers(testenv.PostgresPool(t))
	settings := json.RawMessage(`{"mode":"position-monitor","symbols":["BTC-USD"]}`)

	userID, exchangeID, err := users.SeedUser(ctx, "dev", "alice", settings, "coinbase")
	if err != nil {
		t.Fatalf("SeedUser: %v", err)
	}
	got, err := users.UserByToken(ctx, "alice")
	if err != nil {
		t.Fatalf("UserByToken: %v", err)
	}
	if got.ID != userID || got.Token != "alice" || got.Provider != "dev" {
		t.Errorf("UserByToken = %+v, want id %d token alice provider dev", got, userID)
	}
	if !jsonEqual(t, got.Settings, settings) {
		t.Errorf("settings = %s, want %s", got.Settings, settings)
	}
	account, err := users.DefaultExchangeAccount(ctx, userID)
	if err != nil || account != exchangeID {
		t.Errorf("DefaultExchangeAccount = %d, %v; want %d", account, err, exchangeID)
	}

	t.Run("seeding again keeps ids and replaces settings", func(t *testing.T) {
		newSettings := json.RawMessage(`{"mode":"scalper-macdv"}`)
		userID2, exchangeID2, err := users.SeedUser(ctx, "dev", "alice", newSettings, "coinbase")
		if err != nil {
			t.Fatalf("SeedUser again: %v", err)
		}
		if userID2 != userID || exchangeID2 != exchangeID {
			t.Errorf("ids = %d, %d; want %d, %d", userID2, exchangeID2, userID, exchangeID)
		}
		got, err := users.UserByToken(ctx, "alice")
		if err != nil || !jsonEqual(t, got.Settings, newSettings) {
			t.Errorf("settings after reseed = %s, %v; want %s", got.Settings, err, newSettings)
		}
	})

	t.Run("nil settings are an empty object", func(t *testing.T) {
		if _, _, err := users.SeedUser(ctx, "dev", "bob", nil, "coinbase"); err != nil {
			t.Fatalf("SeedUser: %v", err)
		}
		got, err := users.UserByToken(ctx, "bob")
		if err != nil || !jsonEqual(t, got.Settings, []byte(`{}`)) {
			t.Errorf("settings = %s, %v; want {}", got.Settings, err)
		}
	})
}

func TestUserByTokenErrors(t *testing.T) {
	ctx := testContext(t)
	pool := testenv.PostgresPool(t)
	users := db.NewUsers(pool)
	for _, provider := range []string{"dev", "oidc"} {
		if _, _, err := users.SeedUser(ctx, provider, "shared", nil, "coinbase"); err != nil {
			t.Fatalf("SeedUser: %v", err)
		}
	}

	cases := []struct {
		token string
		want  error
	}{
		{"nobody", db.ErrUnknownUser},
		{"", db.ErrUnknownUser},
		{"shared", db.ErrAmbiguousToken},
	}
	for _, tc := range cases {
		t.Run(tc.token, func(t *testing.T) {
			_, err := users.UserByToken(ctx, tc.token)
			if !errors.Is(err, tc.want) {
				t.Fatalf("UserByToken(%q) err = %v, want %v", tc.token, err, tc.want)
			}
		})
	}
}

func TestDefaultExchangeAccountNone(t *testing.T) {
	ctx := testContext(t)
	pool := testenv.PostgresPool(t)
	var userID int64
	err := pool.QueryRow(ctx, `INSERT INTO users (identity_provider, identity_sub) VALUES ('dev', 'noaccount') RETURNING id`).Scan(&userID)
	if err != nil {
		t.Fatal(err)
	}
	_, err = db.NewUsers(pool).DefaultExchangeAccount(ctx, userID)
	if !errors.Is(err, db.ErrNoExchangeAccount) {
		t.Fatalf("err = %v, want ErrNoExchangeAccount", err)
	}
}

func TestSeedUserRejectsInvalidInput(t *testing.T) {
	ctx := testContext(t)
	users := db.NewUsers(testenv.PostgresPool(t))
	cases := []struct {
		name                    string
		provider, sub, exchange string
		settings                json.RawMessage
	}{
		{"empty provider", "", "alice", "coinbase", nil},
		{"empty sub", "dev", "", "coinbase", nil},
		{"empty exchange", "dev", "alice", "", nil},
		{"settings not JSON", "dev", "alice", "coinbase", json.RawMessage(`{"mode":`)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := users.SeedUser(ctx, tc.provider, tc.sub, tc.settings, tc.exchange)
			if !errors.Is(err, db.ErrInvalidInput) {
				t.Fatalf("err = %v, want ErrInvalidInput", err)
			}
		})
	}
	if _, err := users.UserByToken(ctx, "alice"); !errors.Is(err, db.ErrUnknownUser) {
		t.Errorf("a rejected seed stored a user: %v", err)
	}
}
