// Lab 3: majority3 is a user-defined primitive: out is 1 when at least two
// of the three inputs are 1 (x inputs give x unless the other two agree).
primitive majority3 (out, a, b, c);
  output out;
  input  a, b, c;
  table
  // a b c : out
     0 0 ? : 0;
     0 ? 0 : 0;
     ? 0 0 : 0;
     1 1 ? : 1;
     1 ? 1 : 1;
     ? 1 1 : 1;
  endtable
endprimitive

// Lab 3: triple-modular-redundancy voter.
// Votes bit by bit over three copies of a WIDTH-bit word using the
// majority3 primitive, and flags mismatch when the three copies are not
// all equal (one copy disagrees with the others).
module tmr_voter #(parameter WIDTH = 4) (
  input  [WIDTH-1:0] a,
  input  [WIDTH-1:0] b,
  input  [WIDTH-1:0] c,
  output [WIDTH-1:0] y,
  output             mismatch
);
  genvar i;
  generate
    for (i = 0; i < WIDTH; i = i + 1) begin : g_bit
      majority3 u_maj (y[i], a[i], b[i], c[i]);
    end
  endgenerate

  assign mismatch = (a != b) || (b != c);
endmodule
