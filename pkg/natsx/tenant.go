package natsx

import "vigil.dev/pkg/contract"

// StreamSubject is one subject filter of a stream.
type StreamSubject struct {
	Stream  string
	Subject string
}

// UserSubjects are the stored subjects of everything JetStream holds of
// user, stream by stream: results and progress, candles and indicator
// updates (as stored, under their partition token), alerts, command audit
// records, and the user's entries of the KV buckets VIGIL_STATE,
// VIGIL_QUEUE, VIGIL_USERS and VIGIL_ALERT_STATE. A deleted tenant's
// messages are purged by these filters. user must be a valid user token.
func UserSubjects(user string) ([]StreamSubject, error) {
	if err := contract.ValidateUserToken(user); err != nil {
		return nil, err
	}
	subjects := []StreamSubject{
		{contract.StreamResults, "vigil.result." + user + ".>"},
		{contract.StreamResults, "vigil.progress." + user + ".>"},
		{contract.StreamCandles, "vigil.candle." + partitionToken + ".*." + user + ".>"},
		{contract.StreamIndicators, "vigil.indicator." + partitionToken + ".*." + user + ".>"},
		{contract.StreamAlerts, "vigil.alert." + user + ".>"},
		{StreamCommands, CommandLogSubject(user)},
	}
	for _, bucket := range []string{contract.BucketState, BucketQueue, BucketUsers, BucketAlertState} {
		subjects = append(subjects, StreamSubject{"KV_" + bucket, "$KV." + bucket + "." + contract.StateKey(user)})
	}
	return subjects, nil
}
