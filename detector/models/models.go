// Package models ships the detector's trained model files inside the binary
// (the -model default), so a deployment needs no extra file. Rebuild them
// with `detector train` (README.md).
package models

import _ "embed"

// FlowID3 is flow-id3.model: the flow model of model.TrainNSLKDD (golearn's
// binary ID3 tree, a 5-class ID3 tree and an isolation forest fitted on the
// normal records) trained on every record of NSL-KDD KDDTrain+_20Percent
// (`detector train -all`) over the 26 features of feature set kdd26-v2
// (the 7 basic flow columns and the 19 traffic columns; README.md in this
// folder).
//
//go:embed flow-id3.model
var FlowID3 []byte

// FlowID3Name is the file name of FlowID3.
const FlowID3Name = "flow-id3.model"

// QNameID3 is qname-id3.model: golearn's ID3 tree over the lexical features
// of a DNS query name (internal/qname), trained on
// labeled/dns-tunnel-qnames/train.csv (README.md in this folder).
//
//go:embed qname-id3.model
var QNameID3 []byte

// QNameID3Name is the file name of QNameID3.
const QNameID3Name = "qname-id3.model"

// HostIForest is host-iforest.model: golearn's isolation forest over
// per-host windows (internal/hostmodel), fitted on the host windows of the
// benign labelled captures, with its threshold (README.md in detector/).
//
//go:embed host-iforest.model
var HostIForest []byte

// HostIForestName is the file name of HostIForest.
const HostIForestName = "host-iforest.model"
