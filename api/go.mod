module netwatch/api

go 1.26.0

replace (
	netwatch/schema => ../schema
	netwatch/testkit => ../testkit
)
