// cybersource-rest-client ships no type declarations: its exports are typed `any` here, so that
// `tsc` can check the examples; the examples type the few callback shapes they read themselves.
declare module 'cybersource-rest-client'
